"""The array-arithmetic path must give scikit-learn's own probabilities, or defer to it."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from cca import linear_heads
from cca.linear_heads import LinearHead

TEXTS = ["my card was charged twice", "where is my refund", "card not arrived yet",
         "cancel the transfer please", "the atm kept my card", "refund still missing",
         "transfer failed again", "pin blocked after three tries", "charged twice for coffee",
         "my new card has not come"]
LABELS = ["charge", "refund", "card", "transfer", "card", "refund", "transfer", "pin",
          "charge", "card"]


def _union() -> FeatureUnion:
    return FeatureUnion([("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
                         ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4),
                                                  min_df=2))])


def test_union_transform_matches_scikit_learn() -> None:
    union = _union().fit(TEXTS)
    new = ["charged twice, refund please", "unknown words only zzz", ""]
    ours = linear_heads.transform(union, new)
    assert ours.format == "csr"
    # The same bits, not just close: served and trained confidences must agree exactly.
    np.testing.assert_array_equal(ours.toarray(), union.transform(new).toarray())
    assert linear_heads.transform(union, []).shape == (0, ours.shape[1])


@pytest.mark.parametrize("params", [
    {"sublinear_tf": True}, {"norm": None}, {"use_idf": False, "binary": True},
    {"norm": "l1"}, {"analyzer": "char_wb", "ngram_range": (2, 5), "strip_accents": "unicode"},
])
def test_tfidf_weighting_matches_scikit_learn(params) -> None:
    vectorizer = TfidfVectorizer(**params).fit(TEXTS)
    new = ["Charged twice, refund please! Café", "zzz", "", "card card card refund"]
    np.testing.assert_array_equal(linear_heads.transform(vectorizer, new).toarray(),
                                  vectorizer.transform(new).toarray())


def test_weighted_union_is_left_to_scikit_learn() -> None:
    union = _union().set_params(transformer_weights={"word": 2.0, "char": 0.5}).fit(TEXTS)
    np.testing.assert_array_equal(linear_heads.transform(union, TEXTS[:2]).toarray(),
                                  union.transform(TEXTS[:2]).toarray())


def test_multiclass_on_tfidf_matches_predict_proba() -> None:
    union = _union().fit(TEXTS)
    x = union.transform(TEXTS)
    model = LogisticRegression(C=10.0, max_iter=1000).fit(x, LABELS)
    queries = union.transform(["charged twice", "my refund", "zzz"])
    np.testing.assert_allclose(linear_heads.predict_proba(model, queries),
                               model.predict_proba(queries), rtol=1e-10, atol=1e-12)


def test_scaler_folds_into_the_weights() -> None:
    rng = np.random.default_rng(7)
    # Ill-conditioned float32 features, like the static embeddings the fast tier uses.
    x = (rng.normal(size=(60, 12)) * rng.uniform(0.01, 50, size=12) + 3).astype(np.float32)
    y = rng.choice(["a", "b", "c", "d"], size=60)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=1000)).fit(x, y)
    q = x[:7] + np.float32(0.5)
    np.testing.assert_allclose(linear_heads.predict_proba(model, q), model.predict_proba(q),
                               rtol=1e-5, atol=1e-7)
    unscaled = make_pipeline(StandardScaler(with_mean=False),
                             LogisticRegression(max_iter=1000)).fit(x, y)
    np.testing.assert_allclose(linear_heads.predict_proba(unscaled, q),
                               unscaled.predict_proba(q), rtol=1e-5, atol=1e-7)


def test_binary_model_gives_both_columns() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5))
    y = np.where(x[:, 0] + 0.3 * rng.normal(size=40) > 0, "yes", "no")
    model = LogisticRegression().fit(x, y)
    np.testing.assert_allclose(linear_heads.predict_proba(model, x[:9]),
                               model.predict_proba(x[:9]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("model", [
    DummyClassifier(strategy="prior"),
    make_pipeline(MinMaxScaler(), LogisticRegression(max_iter=1000)),
])
def test_other_models_defer_to_scikit_learn(model) -> None:
    x = np.random.default_rng(3).normal(size=(30, 4))
    y = np.array(["a", "b", "c"] * 10)
    model.fit(x, y)
    assert LinearHead.of(model) is None
    np.testing.assert_array_equal(linear_heads.predict_proba(model, x[:5]),
                                  model.predict_proba(x[:5]))


def test_unfitted_model_is_not_reproduced() -> None:
    assert LinearHead.of(LogisticRegression()) is None

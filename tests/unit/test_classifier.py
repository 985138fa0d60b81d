import numpy as np

from cca.classifier import ClassifierParams, TieredClassifier, threshold_for_precision


def test_threshold_for_precision_picks_widest_safe_cut():
    conf = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    assert threshold_for_precision(conf, correct, 1.0, min_support=1) == 0.8
    assert threshold_for_precision(conf, correct, 0.8, min_support=1) == 0.7
    assert threshold_for_precision(conf, ~correct, 0.9, min_support=1) == 1.0


def _toy(seed: int = 0):
    rng = np.random.default_rng(seed)
    words = {"a": "refund money back", "b": "password login access", "c": "parcel late delivery"}
    texts, y, fast, deep = [], [], [], []
    centres = {k: rng.normal(size=8) for k in words}
    for _ in range(80):
        for label, w in words.items():
            texts.append(" ".join(rng.choice(w.split(), size=3)) + " " + rng.choice(["pls", "hi"]))
            y.append(label)
            fast.append(centres[label] + rng.normal(scale=2.0, size=8))
            deep.append(centres[label] + rng.normal(scale=0.5, size=8))
    return texts, y, np.asarray(fast, np.float32), np.asarray(deep, np.float32)


def test_tiered_classifier_calibrates_and_asks_for_deep_vectors_only_when_unsure():
    texts, y, fast, deep = _toy()
    fit, hold = slice(0, 150), slice(150, 240)
    clf = TieredClassifier(params=ClassifierParams(tfidf_c=1.0, fast_c=1.0, deep_c=1.0,
                                                   fast_precision=0.99))
    clf.fit(texts[fit], fast[fit], deep[fit], y[fit])
    clf.calibrate(texts[hold], fast[hold], deep[hold], y[hold])
    assert clf.fast_temperature > 0 and clf.deep_temperature > 0
    assert 0 < clf.fast_threshold <= 1

    asked: list[list[int]] = []

    def deep_vectors(rows: list[int]) -> np.ndarray:
        asked.append(rows)
        return deep[hold][rows]

    proba, used = clf.predict_proba(texts[hold], fast[hold], deep_vectors)
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert len(asked) <= 1 and (not asked or asked[0] == np.flatnonzero(used).tolist())
    fast_only, _ = clf.predict_proba(texts[hold], fast[hold], None)
    assert (fast_only[~used].argmax(1) == proba[~used].argmax(1)).all()
    accuracy = (np.asarray(clf.labels)[proba.argmax(1)] == np.asarray(y[hold])).mean()
    assert accuracy >= 0.85


def test_without_deep_model_the_fast_tier_answers_everything():
    texts, y, fast, _ = _toy(1)
    clf = TieredClassifier().fit(texts[:150], fast[:150], None, y[:150])
    clf.calibrate(texts[150:], fast[150:], None, y[150:])
    _, used = clf.predict_proba(texts[150:], fast[150:], lambda rows: 1 / 0)
    assert not used.any() and clf.fast_threshold == 0.0

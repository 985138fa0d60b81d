"""The scikit-learn stage: TF-IDF and sentence-embedding logistic regressions, pooled.

The two views make different mistakes (surface words vs meaning), so their averaged
probabilities beat either alone; a temperature fitted on held-out tickets makes the
confidence mean what it says, which is what the review threshold relies on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion


@dataclass
class ClassifierParams:
    tfidf_c: float = 10.0
    embedding_c: float = 10.0
    embedding_weight: float = 0.5
    max_iter: int = 1000


@dataclass
class EnsembleClassifier:
    params: ClassifierParams = field(default_factory=ClassifierParams)
    labels: list[str] = field(default_factory=list)
    temperature: float = 1.0
    vectorizer: FeatureUnion | None = None
    text_model: LogisticRegression | None = None
    embedding_model: LogisticRegression | None = None

    def fit(self, texts: list[str], embeddings: np.ndarray, y: list[str]) -> EnsembleClassifier:
        self.labels = sorted(set(y))
        self.vectorizer = FeatureUnion(
            [
                ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1,
                                         lowercase=True, strip_accents="unicode")),
                ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5),
                                         sublinear_tf=True, min_df=2, lowercase=True)),
            ]
        )
        x_text = self.vectorizer.fit_transform(texts)
        self.text_model = LogisticRegression(C=self.params.tfidf_c, max_iter=self.params.max_iter)
        self.text_model.fit(x_text, y)
        self.embedding_model = LogisticRegression(
            C=self.params.embedding_c, max_iter=self.params.max_iter
        )
        self.embedding_model.fit(embeddings, y)
        return self

    def raw_proba(self, texts: list[str], embeddings: np.ndarray) -> np.ndarray:
        assert self.vectorizer is not None and self.text_model is not None
        assert self.embedding_model is not None
        # Log-linear pooling: a class both views find likely beats one only a view is sure of.
        log_text = self.text_model.predict_log_proba(self.vectorizer.transform(texts))
        log_emb = self.embedding_model.predict_log_proba(embeddings)
        w = self.params.embedding_weight
        pooled = (1 - w) * log_text + w * log_emb
        pooled -= pooled.max(axis=1, keepdims=True)
        p = np.exp(pooled)
        return p / p.sum(axis=1, keepdims=True)

    def predict_proba(self, texts: list[str], embeddings: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities, columns in ``self.labels`` order."""
        return _temper(self.raw_proba(texts, embeddings), self.temperature)

    def calibrate(self, texts: list[str], embeddings: np.ndarray, y: list[str]) -> float:
        """Fit the temperature that minimises log-loss on held-out tickets."""
        raw = self.raw_proba(texts, embeddings)
        index = {label: i for i, label in enumerate(self.labels)}
        known = np.array([label in index for label in y])
        rows = np.flatnonzero(known)
        cols = np.array([index[label] for label in np.asarray(y)[known]])

        def nll(t: float) -> float:
            p = _temper(raw[rows], t)
            return float(-np.mean(np.log(np.clip(p[np.arange(len(rows)), cols], 1e-12, 1))))

        self.temperature = float(minimize_scalar(nll, bounds=(0.05, 5.0), method="bounded").x)
        return self.temperature


def _temper(p: np.ndarray, t: float) -> np.ndarray:
    logp = np.log(np.clip(p, 1e-12, 1)) / t
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=1, keepdims=True)


def threshold_for_precision(
    confidence: np.ndarray,
    correct: np.ndarray,
    target: float,
    min_support: int = 50,
    already: tuple[int, int] = (0, 0),
) -> float:
    """The lowest confidence at which all automatic answers are right ``target`` of the time.

    ``already`` is (answered, correct) by earlier stages on the same tickets, so the target
    holds for the cascade as a whole, not just for this stage.
    """
    order = np.argsort(-confidence)
    hits = np.cumsum(correct[order]) + already[1]
    n = np.arange(1, len(order) + 1) + already[0]
    ok = (hits / n >= target) & (n - already[0] >= min(min_support, len(order) // 2))
    if not ok.any():
        return 1.0
    last = np.flatnonzero(ok)[-1]
    return float(confidence[order][last])

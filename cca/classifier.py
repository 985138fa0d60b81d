"""The scikit-learn stage: logistic regressions on TF-IDF and on sentence embeddings, pooled.

Two tiers. The fast tier pools TF-IDF with the cheap static embedding every ticket already
has; when it is sure (calibrated confidence >= ``fast_threshold``, set on held-out tickets
for ``fast_precision``), it answers. Only the uncertain rest pays for the contextual MiniLM
embedding, whose pool with TF-IDF is the more accurate model. Log-linear pooling makes a class
both views find likely beat one only one view is sure of; a temperature per tier, fitted on
held-out tickets, makes the confidence mean what it says, which the review threshold needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from cca import linear_heads

DeepVectors = Callable[[list[int]], np.ndarray]


@dataclass
class ClassifierParams:
    tfidf_c: float = 10.0
    fast_c: float = 0.3
    deep_c: float = 10.0
    embedding_weight: float = 0.5
    fast_precision: float = 0.985
    max_iter: int = 1000


@dataclass
class Parts:
    """The two views' log-probabilities behind the pooled ones, row by row.

    Whether the text view and the embedding view agree is a signal the pooled probability
    hides; and a class's column can be dropped to ask what the model would have said had it
    never learnt that class (how training simulates tickets about something new).
    """

    log_text: np.ndarray
    log_emb: np.ndarray  # the fast tier's, or the deep tier's where it was needed
    temperature: np.ndarray  # per row: the tier's temperature
    used_deep: np.ndarray
    weight: float  # the embedding view's weight in the pool

    def proba(self, drop: np.ndarray | None = None) -> np.ndarray:
        """Calibrated probabilities; ``drop[i]``: a column left out of row i (-1: none)."""
        logits = ((1 - self.weight) * self.log_text + self.weight * self.log_emb)
        logits = logits / self.temperature[:, None]
        return _softmax(_without(logits, drop))

    def views_agree(self, drop: np.ndarray | None = None) -> np.ndarray:
        return (_without(self.log_text, drop).argmax(axis=1)
                == _without(self.log_emb, drop).argmax(axis=1))


def _without(logits: np.ndarray, drop: np.ndarray | None) -> np.ndarray:
    if drop is None:
        return logits
    out = logits.copy()
    rows = np.flatnonzero(drop >= 0)
    out[rows, drop[rows]] = -np.inf
    return out


@dataclass
class TieredClassifier:
    params: ClassifierParams = field(default_factory=ClassifierParams)
    labels: list[str] = field(default_factory=list)
    vectorizer: FeatureUnion | None = None
    text_model: LogisticRegression | None = None
    fast_model: Pipeline | None = None
    deep_model: LogisticRegression | None = None
    fast_temperature: float = 1.0
    deep_temperature: float = 1.0
    fast_threshold: float = 0.0
    # The trust model (cca.scope.TrustModel) fitted with the operating points; None in bundles
    # from before them. Typed loosely: cca.scope builds on this module, not the reverse.
    trust: object | None = None

    def fit(self, texts: list[str], fast_vectors: np.ndarray, deep_vectors: np.ndarray | None,
            y: list[str]) -> TieredClassifier:
        self.labels = sorted(set(y))
        self.vectorizer = FeatureUnion([
            ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True,
                                     strip_accents="unicode")),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True,
                                     min_df=2)),
        ])
        p = self.params
        self.text_model = LogisticRegression(C=p.tfidf_c, max_iter=p.max_iter)
        self.text_model.fit(self.vectorizer.fit_transform(texts), y)
        # Standardised: static vectors are ill-conditioned and lbfgs crawls on them raw.
        self.fast_model = make_pipeline(
            StandardScaler(), LogisticRegression(C=p.fast_c, max_iter=p.max_iter))
        self.fast_model.fit(fast_vectors, y)
        self.deep_model = None
        if deep_vectors is not None:
            self.deep_model = LogisticRegression(C=p.deep_c, max_iter=p.max_iter)
            self.deep_model.fit(deep_vectors, y)
        return self

    def refit_on(self, texts: list[str], fast_vectors: np.ndarray,
                 deep_vectors: np.ndarray | None, y: list[str]) -> TieredClassifier:
        """A copy fitted on a subset of this model's data (a cross-validation fold).

        It keeps this model's TF-IDF vocabulary (fitted without labels, so nothing about the
        left-out answers leaks), temperatures and tier threshold, and starts each regression
        from this model's weights: the optimum is the same (the loss is convex), reached in
        a fraction of the iterations, which is what makes five folds affordable.
        """
        model = TieredClassifier(params=self.params, labels=sorted(set(y)),
                                 vectorizer=self.vectorizer,
                                 fast_temperature=self.fast_temperature,
                                 deep_temperature=self.deep_temperature,
                                 fast_threshold=self.fast_threshold)
        warm = model.labels == self.labels
        p = self.params
        assert self.vectorizer is not None and self.fast_model is not None
        model.text_model = _regression(p.tfidf_c, p.max_iter, self.text_model if warm else None)
        model.text_model.fit(linear_heads.transform(self.vectorizer, texts), y)
        fast = _regression(p.fast_c, p.max_iter, self.fast_model[-1] if warm else None)
        model.fast_model = make_pipeline(StandardScaler(), fast)
        model.fast_model.fit(fast_vectors, y)
        if self.deep_model is not None and deep_vectors is not None:
            model.deep_model = _regression(p.deep_c, p.max_iter,
                                           self.deep_model if warm else None)
            model.deep_model.fit(deep_vectors, y)
        return model

    def _log_text(self, texts: list[str]) -> np.ndarray:
        assert self.vectorizer is not None and self.text_model is not None
        return _log_proba(self.text_model, linear_heads.transform(self.vectorizer, texts))

    def _pool(self, log_text: np.ndarray, model: LogisticRegression | Pipeline, vectors: np.ndarray,
              temperature: float) -> np.ndarray:
        w = self.params.embedding_weight
        return _softmax(((1 - w) * log_text + w * _log_proba(model, vectors)) / temperature)

    def predict_proba(
        self, texts: list[str], fast_vectors: np.ndarray, deep_vectors: DeepVectors | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities (columns in ``labels`` order) and which rows used MiniLM.

        ``deep_vectors(rows)`` is called once, for the uncertain rows only.
        """
        parts = self.predict_parts(texts, fast_vectors, deep_vectors)
        return parts.proba(), parts.used_deep

    def predict_parts(self, texts: list[str], fast_vectors: np.ndarray,
                      deep_vectors: DeepVectors | None = None) -> Parts:
        """What ``predict_proba`` pools, view by view (see ``Parts``)."""
        assert self.fast_model is not None
        n = len(texts)
        log_text = self._log_text(texts)
        log_emb = _log_proba(self.fast_model, fast_vectors)
        temperature = np.full(n, self.fast_temperature)
        parts = Parts(log_text, log_emb, temperature, np.zeros(n, dtype=bool),
                      self.params.embedding_weight)
        if self.deep_model is not None and deep_vectors is not None:
            deep = parts.proba().max(axis=1) < self.fast_threshold
            rows = np.flatnonzero(deep).tolist()
            if rows:
                log_emb[rows] = _log_proba(self.deep_model, deep_vectors(rows))
                temperature[rows] = self.deep_temperature
                parts.used_deep[rows] = True
        return parts

    def calibrate(self, texts: list[str], fast_vectors: np.ndarray,
                  deep_vectors: np.ndarray | None, y: list[str]) -> None:
        """Temperatures per tier, then the fast tier's threshold, on held-out tickets."""
        assert self.fast_model is not None
        index = {label: i for i, label in enumerate(self.labels)}
        known = np.array([label in index for label in y])
        cols = np.array([index[label] for label in np.asarray(y)[known]])
        log_text = self._log_text(texts)[known]
        self.fast_temperature = _fit_temperature(
            lambda t: self._pool(log_text, self.fast_model, fast_vectors[known], t), cols)
        if self.deep_model is None or deep_vectors is None:
            self.fast_threshold = 0.0
            return
        self.deep_temperature = _fit_temperature(
            lambda t: self._pool(log_text, self.deep_model, deep_vectors[known], t), cols)
        fast = self._pool(log_text, self.fast_model, fast_vectors[known], self.fast_temperature)
        self.fast_threshold = threshold_for_precision(
            fast.max(axis=1), fast.argmax(axis=1) == cols, self.params.fast_precision)


def _regression(c: float, max_iter: int, start: LogisticRegression | None) -> LogisticRegression:
    """A logistic regression, warm-started from ``start``'s weights when given."""
    model = LogisticRegression(C=c, max_iter=max_iter, warm_start=start is not None)
    if start is not None:
        model.coef_ = start.coef_.copy()
        model.intercept_ = start.intercept_.copy()
    return model


def _log_proba(model: LogisticRegression | Pipeline, x: object) -> np.ndarray:
    """Log-probabilities floored at 1e-12, so one view's hard zero cannot veto a class."""
    return np.log(np.clip(linear_heads.predict_proba(model, x), 1e-12, 1.0))


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _fit_temperature(proba_at: Callable[[float], np.ndarray], cols: np.ndarray) -> float:
    rows = np.arange(len(cols))

    def nll(t: float) -> float:
        return float(-np.mean(np.log(np.clip(proba_at(t)[rows, cols], 1e-12, 1))))

    return float(minimize_scalar(nll, bounds=(0.05, 5.0), method="bounded").x)


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

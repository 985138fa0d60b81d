"""Fitted scikit-learn linear models and TF-IDF unions, evaluated as plain array arithmetic.

On the serving path a batch holds a handful of tickets, and scikit-learn's per-call work
(input validation, feature-name checks, joblib dispatch in ``FeatureUnion``) costs more than
the arithmetic: a sizeable share of the CPU a ticket's classification takes went to the
``predict_proba`` calls alone (benchmarks/RESULTS.md). The same numbers come from the fitted
coefficients in one product each; a ``StandardScaler`` in front folds into the weights.
Anything else falls back to scikit-learn, so the result never depends on this module.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import StandardScaler


@dataclass(frozen=True)
class LinearHead:
    """``predict_proba`` of a fitted logistic regression: softmax (or sigmoid) of x·W + b."""

    weights: np.ndarray  # (n_features, n_outputs)
    bias: np.ndarray  # (n_outputs,)

    @classmethod
    def of(cls, model: Any) -> LinearHead | None:
        """The head of ``model``, or None when it is not a shape this module reproduces."""
        scaler = None
        if isinstance(model, Pipeline):
            steps = [step for _, step in model.steps]
            if len(steps) != 2 or not isinstance(steps[0], StandardScaler):
                return None
            scaler, model = steps
        if type(model) is not LogisticRegression or not hasattr(model, "coef_"):
            return None
        coef = np.asarray(model.coef_, dtype=np.float64).T  # (n_features, n_outputs)
        weights, bias = coef, np.asarray(model.intercept_, dtype=np.float64)
        if scaler is not None:
            # (x - mean) / scale · W + b  ==  x · (W / scale) + (b - (mean / scale) · W)
            n = coef.shape[0]
            scale = scaler.scale_ if scaler.with_std else np.ones(n)
            mean = scaler.mean_ if scaler.with_mean else np.zeros(n)
            weights = coef / scale[:, None]
            bias = bias - (mean / scale) @ coef
        return cls(np.ascontiguousarray(weights), bias)

    def proba(self, x: Any) -> np.ndarray:
        logits = np.asarray(x @ self.weights, dtype=np.float64) + self.bias
        if logits.shape[1] == 1:  # binary: scikit-learn's [1 - p, p]
            p = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            return np.column_stack([1.0 - p, p])
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


_heads: weakref.WeakKeyDictionary[Any, LinearHead | None] = weakref.WeakKeyDictionary()


def predict_proba(model: Any, x: Any) -> np.ndarray:
    """``model.predict_proba(x)``, from the cached head when the model has one."""
    try:
        head = _heads[model]
    except KeyError:
        head = _heads[model] = LinearHead.of(model)
    return head.proba(x) if head is not None else model.predict_proba(x)


def transform(vectorizer: Any, texts: list[str]) -> Any:
    """``vectorizer.transform(texts)``; an unweighted ``FeatureUnion`` without joblib."""
    if (isinstance(vectorizer, FeatureUnion) and not vectorizer.transformer_weights
            and all(hasattr(t, "transform") for _, t in vectorizer.transformer_list)):
        parts = [t for _, t in vectorizer.transformer_list]
        if all(_countable(p) for p in parts):
            return _union_csr([_tfidf_rows(p, texts) for p in parts],
                              [len(p.vocabulary_) for p in parts])
        matrices = [p.transform(texts) for p in parts]
        if all(sp.issparse(m) for m in matrices):
            return sp.hstack(matrices, format="csr")
    if _countable(vectorizer):
        return _union_csr([_tfidf_rows(vectorizer, texts)], [len(vectorizer.vocabulary_)])
    return vectorizer.transform(texts)


def _countable(vectorizer: Any) -> bool:
    """Whether ``_tfidf_rows`` reproduces this vectorizer's ``transform``."""
    return (type(vectorizer) is TfidfVectorizer and vectorizer.norm in ("l2", None)
            and vectorizer.input == "content" and np.dtype(vectorizer.dtype) == np.float64
            and hasattr(vectorizer, "vocabulary_"))


_analyzers: weakref.WeakKeyDictionary[Any, Callable[[str], list[str]]] = (
    weakref.WeakKeyDictionary())


def _tfidf_rows(vectorizer: TfidfVectorizer, texts: list[str]
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(sorted column indices, TF-IDF weights) of each text, as ``transform`` computes them.

    scikit-learn's ``transform`` builds, validates and re-validates sparse matrices around
    the counting; for the handful of short texts of a served batch that costs more than the
    counting itself, and it was the largest Python cost left on the cascade's thread (a
    profile under load). Counting the same n-grams with the fitted analyzer and vocabulary
    gives the same matrix without it.
    """
    try:
        analyze = _analyzers[vectorizer]
    except KeyError:
        analyze = _analyzers[vectorizer] = vectorizer.build_analyzer()
    column = vectorizer.vocabulary_.get
    idf = vectorizer.idf_ if vectorizer.use_idf else None
    rows = []
    for text in texts:
        found = [i for i in map(column, analyze(text)) if i is not None]
        idx, counts = np.unique(np.asarray(found, dtype=np.int64), return_counts=True)
        data = np.ones(len(idx)) if vectorizer.binary else counts.astype(np.float64)
        if vectorizer.sublinear_tf:
            np.log(data, out=data)
            data += 1.0
        if idf is not None:
            data *= idf[idx]
        if vectorizer.norm == "l2" and len(data):
            # Summed in order, as scikit-learn's row normalisation does: the same bits.
            norm = math.sqrt(float(np.bincount(np.zeros(len(data), dtype=np.intp),
                                               weights=data * data)[0]))
            if norm:
                data /= norm
        rows.append((idx, data))
    return rows


def _union_csr(parts: list[list[tuple[np.ndarray, np.ndarray]]], widths: list[int]
               ) -> sp.csr_matrix:
    """The rows of each part side by side, as ``FeatureUnion`` stacks them."""
    offsets = np.cumsum([0, *widths])
    n = len(parts[0])
    indices = [part[i][0] + offsets[k] for i in range(n) for k, part in enumerate(parts)]
    data = [part[i][1] for i in range(n) for part in parts]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([sum(len(part[i][0]) for part in parts) for i in range(n)], out=indptr[1:])
    return sp.csr_matrix(
        (np.concatenate(data) if data else np.zeros(0),
         np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64), indptr),
        shape=(n, int(offsets[-1])))

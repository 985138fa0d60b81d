"""Trust: how likely the classifier's answer is right, including "is this ticket even in scope?".

A calibrated probability only rescales the model's own view: a ticket about a product the
model never learnt still gets its most similar class, sometimes confidently. Signals that
*reorder* tickets catch more of those: how close the nearest labelled tickets are and whether
they carry the predicted label, how far the ticket lies from its class in embedding space
(Mahalanobis distance under a shared, shrunk covariance), whether the text and the embedding
views agree, and the margin to the runner-up. A small logistic regression, fitted at training
time on out-of-fold predictions plus simulated unknown tickets (each with its own class
removed, ``cca.classifier.Parts.proba(drop=…)``), combines them into one score; the per-class
thresholds of ``cca.operating_points`` apply to that score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cca.classifier import Parts
from cca.tickets import Neighbour

FEATURES = ("log_odds", "margin", "entropy", "views_agree", "nn_similarity", "nn_agree",
            "distance", "distance_gap")


@dataclass(frozen=True)
class Geometry:
    """Class means and a shared precision matrix of the fast embedding (for distances)."""

    means: np.ndarray  # (classes, dim), in the classifier's label order
    precision: np.ndarray  # (dim, dim)

    @classmethod
    def fit(cls, vectors: np.ndarray, labels: Sequence[str], order: list[str]) -> Geometry:
        # deferred: scikit-learn's covariance module is needed only at training time
        from sklearn.covariance import LedoitWolf

        y = np.asarray(labels)
        x = np.asarray(vectors, dtype=np.float64)
        means = np.vstack([x[y == label].mean(axis=0) for label in order])
        centred = x - means[np.searchsorted(order, y)]
        precision = LedoitWolf(assume_centered=True).fit(centred).precision_
        return cls(means=means, precision=precision)

    def distances(self, vectors: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row to each class mean, per dimension."""
        x = np.asarray(vectors, dtype=np.float64)
        xp = x @ self.precision
        mp = self.means @ self.precision
        d2 = ((xp * x).sum(axis=1)[:, None] - 2 * xp @ self.means.T
              + (mp * self.means).sum(axis=1)[None, :])
        return np.maximum(d2, 0.0) / x.shape[1]


def neighbour_signals(neighbours: Sequence[Sequence[Neighbour]], predicted: Sequence[str]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per ticket: the nearest labelled ticket's similarity, and the share of the neighbours
    labelled with the predicted class (0 and 0 when the index gave none)."""
    top = np.array([max((n.similarity for n in found), default=0.0) for found in neighbours])
    agree = np.array([
        (sum(n.label == label for n in found) / len(found)) if found else 0.0
        for found, label in zip(neighbours, predicted, strict=True)])
    return top, agree


def features(parts: Parts, geometry: Geometry, fast_vectors: np.ndarray,
             nn_similarity: np.ndarray, nn_agree: np.ndarray,
             drop: np.ndarray | None = None, proba: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(feature matrix in ``FEATURES`` order, predicted column, its probability).

    ``proba``: ``parts.proba(drop)`` when the caller has it already (the serving path)."""
    proba = parts.proba(drop) if proba is None else proba
    order = np.argsort(-proba, axis=1)
    pred, second = order[:, 0], order[:, 1] if proba.shape[1] > 1 else order[:, 0]
    rows = np.arange(len(proba))
    p1 = np.clip(proba[rows, pred], 1e-9, 1 - 1e-9)
    p2 = np.clip(proba[rows, second], 1e-12, 1.0)
    entropy = -(proba * np.log(np.clip(proba, 1e-12, 1.0))).sum(axis=1)
    dist = geometry.distances(fast_vectors)
    if drop is not None:
        kept = np.flatnonzero(drop >= 0)
        dist[kept, drop[kept]] = np.inf
    matrix = np.column_stack([
        np.log(p1 / (1 - p1)), np.log(p1 / p2), entropy / np.log(max(proba.shape[1], 2)),
        parts.views_agree(drop).astype(float), nn_similarity, nn_agree,
        np.log1p(dist[rows, pred]), np.log1p(dist[rows, pred]) - np.log1p(dist.min(axis=1)),
    ])
    return matrix, pred, proba[rows, pred]


@dataclass(frozen=True)
class TrustModel:
    """Logistic regression over standardised ``FEATURES``: P(the answer is right)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    geometry: Geometry

    @classmethod
    def fit(cls, x: np.ndarray, right: np.ndarray, geometry: Geometry,
            weights: np.ndarray | None = None) -> TrustModel:
        # deferred: scikit-learn is needed only at training time
        from sklearn.linear_model import LogisticRegression

        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale == 0] = 1.0
        model = LogisticRegression(C=1.0, max_iter=1000)
        model.fit((x - mean) / scale, right.astype(int), sample_weight=weights)
        return cls(mean=mean, scale=scale, coef=model.coef_[0].copy(),
                   intercept=float(model.intercept_[0]), geometry=geometry)

    def score(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def weights(self) -> dict[str, float]:
        """Each signal's weight (on standardised features): what the model card shows."""
        return {name: round(float(w), 4) for name, w in zip(FEATURES, self.coef, strict=True)}

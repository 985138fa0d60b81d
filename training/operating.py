"""Out-of-fold evidence for the per-class operating points and the trust model.

The ~15 % holdout leaves about 20 tickets per Banking77 class: too few to promise any one
class's precision. Cross-validation over the fit part gives every fit ticket a prediction
from a model that never saw it (~100+ per class), which is the evidence the thresholds are
chosen on; the holdout stays untouched to check them honestly. Fold models reuse the final
model's temperatures, so their probabilities mean what the served model's do.

The same predictions, with each ticket's own class removed, stand in for tickets about
something the model never learnt: they teach the trust model (``cca.scope``) what an
unfamiliar ticket looks like, and measure how many of them a threshold would still answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold

from cca.classifier import Parts, TieredClassifier
from cca.scope import Geometry, TrustModel, features, neighbour_signals
from cca.tickets import Neighbour
from training.labelled_set import LabelledSet, TrainProgress

_FLOOR = float(np.log(1e-12))  # a class a fold never saw: the floor _log_proba applies
SIMULATED_UNKNOWNS = 2000  # fit tickets replayed as if their class were unknown


@dataclass(frozen=True)
class OutOfFold:
    """Per fit ticket: what a model that never saw it said, view by view."""

    parts: Parts
    labels: list[str]  # columns, in the final classifier's order


def out_of_fold(clf: TieredClassifier, data: LabelledSet, fit: np.ndarray, folds: int,
                say: TrainProgress, seed: int = 0) -> OutOfFold:
    """``folds``-fold predictions over ``fit`` (positions in ``data``), in that order."""
    labels = clf.labels
    n, k = len(fit), len(labels)
    log_text, log_emb = np.full((n, k), _FLOOR), np.full((n, k), _FLOOR)
    temperature, used_deep = np.ones(n), np.zeros(n, dtype=bool)
    y = np.asarray(data.labels)[fit]
    counts = {label: int((y == label).sum()) for label in labels}
    # A class with fewer tickets than folds cannot be stratified; it goes with fold 0's split.
    strat = np.where([counts[v] >= folds for v in y], y, "__small__")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for i, (train, test) in enumerate(splitter.split(np.zeros(n), strat), start=1):
        say(f"out-of-fold predictions: fold {i}/{folds}")
        model = _fold_model(clf, data, fit[train])
        rows = data.rows(fit[test])
        deep = rows.deep
        parts = model.predict_parts(rows.texts, rows.vectors,
                                    None if deep is None else (lambda r, d=deep: d[r]))
        cols = np.searchsorted(labels, model.labels)
        log_text[np.ix_(test, cols)] = parts.log_text
        log_emb[np.ix_(test, cols)] = parts.log_emb
        temperature[test], used_deep[test] = parts.temperature, parts.used_deep
    return OutOfFold(Parts(log_text, log_emb, temperature, used_deep,
                           clf.params.embedding_weight), labels)


def _fold_model(clf: TieredClassifier, data: LabelledSet, train: np.ndarray
                ) -> TieredClassifier:
    rows = data.rows(train)
    return clf.refit_on(rows.texts, rows.vectors, rows.deep, rows.labels)


@dataclass(frozen=True)
class TrustEvidence:
    """Cross-fitted trust scores of the out-of-fold tickets and of the simulated unknowns."""

    score: np.ndarray  # per fit ticket
    pred: np.ndarray  # predicted label per fit ticket
    correct: np.ndarray
    unknown_score: np.ndarray  # per simulated unknown
    unknown_pred: np.ndarray
    model: TrustModel  # fitted on all of it: the one that serves


def fit_trust(oof: OutOfFold, data: LabelledSet, fit: np.ndarray,
              neighbours: list[list[Neighbour]], top_k: int, unknown_share: float,
              seed: int = 0) -> TrustEvidence:
    """Fit the trust model on out-of-fold tickets plus simulated unknowns (see module doc).

    ``neighbours``: each fit ticket's nearest other labelled tickets (leave-one-out), as the
    serving cache would find them.
    """
    labels = oof.labels
    truth = np.asarray(data.labels)[fit]
    vectors = data.vectors[fit]
    geometry = Geometry.fit(vectors, truth, labels)
    pred_col = oof.parts.proba().argmax(axis=1)
    sim, agree = neighbour_signals(neighbours, [labels[c] for c in pred_col])
    x_in, pred_in, _ = features(oof.parts, geometry, vectors, sim, agree)
    right = np.asarray(labels)[pred_in] == truth
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(fit), size=min(SIMULATED_UNKNOWNS, len(fit)), replace=False)
    x_out, pred_out = _simulated_unknowns(oof, data, fit, sample, geometry, top_k)
    x = np.vstack([x_in, x_out])
    y = np.concatenate([right, np.zeros(len(sample), dtype=bool)])
    w = np.concatenate([np.ones(len(x_in)),
                        np.full(len(sample), unknown_share * len(x_in) / max(len(sample), 1))])
    half = rng.random(len(x)) < 0.5  # cross-fitting: no row is scored by a model it taught
    score = np.empty(len(x))
    for side in (half, ~half):
        model = TrustModel.fit(x[~side], y[~side], geometry, w[~side])
        score[side] = model.score(x[side])
    return TrustEvidence(
        score=score[:len(x_in)], pred=np.asarray(labels)[pred_in], correct=right,
        unknown_score=score[len(x_in):], unknown_pred=np.asarray(labels)[pred_out],
        model=TrustModel.fit(x, y, geometry, w))


def _simulated_unknowns(oof: OutOfFold, data: LabelledSet, fit: np.ndarray, sample: np.ndarray,
                        geometry: Geometry, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Features of sampled fit tickets with their own class removed everywhere: from the
    probabilities, from the class distances and from their neighbours."""
    labels = oof.labels
    truth = np.asarray(data.labels)[fit]
    drop = np.full(len(fit), -1)
    drop[sample] = np.searchsorted(labels, truth[sample])
    parts = Parts(oof.parts.log_text[sample], oof.parts.log_emb[sample],
                  oof.parts.temperature[sample], oof.parts.used_deep[sample], oof.parts.weight)
    proba = parts.proba(drop[sample])
    pred = [labels[c] for c in proba.argmax(axis=1)]
    found = _neighbours_elsewhere(data, fit, sample, top_k)
    sim, agree = neighbour_signals(found, pred)
    x, cols, _ = features(parts, geometry, data.vectors[fit][sample], sim, agree,
                          drop=drop[sample])
    return x, cols


def _neighbours_elsewhere(data: LabelledSet, fit: np.ndarray, sample: np.ndarray, k: int
                          ) -> list[list[Neighbour]]:
    """Each sampled ticket's ``k`` nearest labelled tickets of *other* classes (cosine):
    the index as it would look had the ticket's class never been labelled."""
    unit = data.vectors / np.maximum(np.linalg.norm(data.vectors, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(data.labels)
    out: list[list[Neighbour]] = []
    for start in range(0, len(sample), 256):
        rows = fit[sample[start:start + 256]]
        sims = unit[rows] @ unit.T
        sims[labels[rows][:, None] == labels[None, :]] = -np.inf
        top = np.argsort(-sims, axis=1)[:, :k]
        out += [[Neighbour(ticket_id=data.ids[j], label=data.labels[j],
                           similarity=float(sims[r, j])) for j in top[r]]
                for r in range(len(rows))]
    return out

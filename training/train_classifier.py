"""Train the classifier stage from validated labels in the store, with the cache's track record.

The holdout is chosen by a hash of the ticket id (``training.holdout``): the model is fit on
the rest, and calibrated, thresholded and evaluated on the holdout. There is no refit on
everything, so no model ever saw a holdout ticket and a candidate and the champion can be
compared on the same holdout fairly (except classes kept whole in fit, see ``kept_in_fit``).
The holdout numbers go into the bundle, and so do the leave-one-out track-record seeds: they
reach the serving cache only when the bundle starts serving (``make_current`` here, or a
promotion or rollback in ``training.registry``), never from a candidate.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score

from cascade.vector_cache import CachePolicy, decide, propose
from cca.bundle import BundleInfo, ModelBundle, save_track_record_seeds, set_current
from cca.classifier import ClassifierParams, TieredClassifier, threshold_for_precision
from cca.embeddings import Embedder
from cca.errors import StateError
from cca.settings import Settings
from cca.store import Database
from cca.store.tickets_repo import labelled_tickets
from cca.store.vectors import nearest, seed_track_record, stored_vectors
from cca.tickets import Neighbour
from rules import load_rules
from training.holdout import holdout_f1, split_by_id

Progress = Callable[[str], None]
# Called with the fit and holdout frames (columns id, text, label) before anything is fitted;
# raises to stop training (the data validation step plugs in here).
Validator = Callable[[pd.DataFrame, pd.DataFrame], None]


@dataclass
class TrainReport:
    version: str
    n_train: int
    n_holdout: int
    labels: int
    holdout_accuracy: float
    holdout_macro_f1: float
    threshold: float
    holdout_cascade_coverage: float
    fast_threshold: float
    fit_seconds: float
    cache_seeded_labels: int
    kept_in_fit: list[str] = field(default_factory=list)
    # Per holdout ticket, for the evaluation artifacts (confusion matrix, per-class report).
    fit_ids: list[str] = field(default_factory=list, repr=False)
    fit_labels: list[str] = field(default_factory=list, repr=False)
    fit_hashes: list[str] = field(default_factory=list, repr=False)
    holdout_ids: list[str] = field(default_factory=list, repr=False)
    holdout_true: list[str] = field(default_factory=list, repr=False)
    holdout_pred: list[str] = field(default_factory=list, repr=False)
    holdout_hashes: list[str] = field(default_factory=list, repr=False)
    holdout_texts: list[str] = field(default_factory=list, repr=False)


def _data_hash(ids: list[str], texts: list[str], labels: list[str]) -> str:
    h = hashlib.sha256()
    for tid, text, label in sorted(zip(ids, texts, labels, strict=True)):
        h.update(f"{tid}\x1f{text}\x1f{label}\x1e".encode())
    return h.hexdigest()


def embeddings_for(db: Database, embedder: Embedder, ids: list[str], texts: list[str],
                   hashes: list[str]) -> np.ndarray:
    """Reuse vectors the store already holds for unchanged text; embed the rest."""
    with db.begin() as conn:
        stored = stored_vectors(conn, embedder.model_id)
    rows: list[np.ndarray | None] = []
    missing = []
    for i, (tid, digest) in enumerate(zip(ids, hashes, strict=True)):
        hit = stored.get(tid)
        rows.append(hit[1] if hit and hit[0] == digest else None)
        if rows[-1] is None:
            missing.append(i)
    if missing:
        for i, vector in zip(missing, embedder.embed([texts[i] for i in missing]), strict=True):
            rows[i] = vector
    return np.vstack(rows).astype(np.float32)


def leave_one_out_neighbours(
    db: Database, model_id: str, ids: list[str], vectors: np.ndarray, k: int, batch: int = 512
) -> list[list[Neighbour]]:
    """Each labelled ticket's nearest *other* labelled tickets, as the cache would see them."""
    out: list[list[Neighbour]] = []
    with db.begin() as conn:
        for start in range(0, len(ids), batch):
            out += nearest(conn, model_id, vectors[start : start + batch], k=k,
                           exclude_ids=ids[start : start + batch])
    return out


def track_record_seeds(
    neighbours: list[list[Neighbour]], labels: list[str], policy: CachePolicy
) -> dict[str, tuple[int, int]]:
    """Per label: how often the cache's proposal of that label would have been right."""
    seeds: dict[str, list[int]] = {}
    for truth, found in zip(labels, neighbours, strict=True):
        proposal = propose(found, policy)
        if proposal is not None:
            counts = seeds.setdefault(proposal.label, [0, 0])
            counts[0] += 1
            counts[1] += int(proposal.label == truth)
    return {label: (r, c) for label, (r, c) in seeds.items()}


def train_from_store(
    settings: Settings,
    db: Database,
    embedder: Embedder,
    departments: dict[str, str],
    deep_embedder: Embedder | None = None,
    params: ClassifierParams | None = None,
    progress: Progress | None = None,
    since: datetime | None = None,
    make_current: bool = True,
    validate: Validator | None = None,
) -> tuple[ModelBundle, TrainReport]:
    """Train on validated labels given since ``since`` (all of them if None) and save a bundle.

    ``make_current=False`` saves the bundle (with its track-record seeds) without pointing
    ``CURRENT`` at it or touching the serving cache: a candidate serves only once the
    promotion gate (``training.steps``) lets it.
    """
    say = progress or (lambda _msg: None)
    with db.begin() as conn:
        rows = labelled_tickets(conn, since=since)
    counts = Counter(label for _, label in rows)
    if len(counts) < 2:
        raise StateError("training needs validated labels of at least 2 classes: "
                         "run `cca import FILE --label-col COL` first")
    ids = [t.id for t, _ in rows]
    texts = [t.text for t, _ in rows]
    labels = [label for _, label in rows]
    hashes = [t.content_hash() for t, _ in rows]
    say(f"{len(rows)} labelled tickets, {len(counts)} labels")
    vectors = embeddings_for(db, embedder, ids, texts, hashes)
    deep = embeddings_for(db, deep_embedder, ids, texts, hashes) if deep_embedder else None

    say("estimating the cache track record (leave-one-out on the index)")
    loo = leave_one_out_neighbours(db, embedder.model_id, ids, vectors, settings.cache_top_k)
    policy = CachePolicy.from_settings(settings)
    seeds = track_record_seeds(loo, labels, policy)
    rules = load_rules(settings.rules_path)

    split = split_by_id(ids, labels, settings.train_holdout_fraction, texts=texts)
    if not split.holdout:
        raise StateError(f"the holdout is empty ({len(rows)} labelled tickets at "
                         f"train_holdout_fraction={settings.train_holdout_fraction}): "
                         "label more tickets or raise CCA_TRAIN_HOLDOUT_FRACTION")
    idx_fit, idx_hold = np.asarray(split.fit), np.asarray(split.holdout)
    params = params or ClassifierParams()
    take = lambda idx, seq: [seq[i] for i in idx]  # noqa: E731
    pick = lambda idx, m: None if m is None else m[idx]  # noqa: E731
    if validate is not None:
        frame = lambda idx: pd.DataFrame({"id": take(idx, ids), "text": take(idx, texts),  # noqa: E731
                                          "label": take(idx, labels)})
        validate(frame(idx_fit), frame(idx_hold))
    t0 = time.perf_counter()
    say(split.describe())
    clf = TieredClassifier(params=params).fit(
        take(idx_fit, texts), vectors[idx_fit], pick(idx_fit, deep), take(idx_fit, labels))
    clf.calibrate(take(idx_hold, texts), vectors[idx_hold], pick(idx_hold, deep),
                  take(idx_hold, labels))
    proba, used_deep = clf.predict_proba(
        take(idx_hold, texts), vectors[idx_hold],
        None if deep is None else (lambda r: deep[idx_hold][r]))
    y_hold = np.asarray(take(idx_hold, labels))
    pred = np.asarray(clf.labels)[proba.argmax(axis=1)]
    conf = proba.max(axis=1)
    correct = pred == y_hold
    # The classifier only sees what rules and cache pass on; the threshold is chosen so the
    # cascade as a whole (rules + cache + classifier) meets the target on the holdout.
    earlier = []
    for i in idx_hold:
        hit = rules.apply(rows[i][0])
        if hit.label and hit.confidence >= settings.rules_min_confidence:
            earlier.append(hit.label)
        else:
            answer = decide(loo[i], seeds, policy)
            earlier.append(answer.label if answer else None)
    reaches = np.array([e is None for e in earlier])
    done = (int((~reaches).sum()),
            int(sum(e == t for e, t in zip(earlier, y_hold, strict=True) if e is not None)))
    threshold = threshold_for_precision(conf[reaches], correct[reaches],
                                        settings.classifier_target_precision, already=done)
    coverage = float((~reaches).mean() + (reaches & (conf >= threshold)).mean())
    say(f"holdout accuracy {correct.mean():.4f} (MiniLM on {used_deep.mean():.0%}); rules+cache "
        f"answer {1 - reaches.mean():.1%} ({done[1] / max(done[0], 1):.2%} right); "
        f"classifier threshold {threshold:.3f}; cascade covers {coverage:.1%}")

    final = clf  # no refit on the holdout: see the module docstring
    fit_seconds = time.perf_counter() - t0
    auto = (~reaches) | (conf >= threshold)
    answers = np.where(reaches, pred, np.asarray([e or "" for e in earlier], dtype=object))

    data_hash = _data_hash(ids, texts, labels)
    created = datetime.now(UTC)
    version = f"clf-{created:%Y%m%dT%H%M%S}-{data_hash[:8]}"
    metrics = {
        "holdout_accuracy": float(correct.mean()),
        "holdout_macro_f1": holdout_f1(list(y_hold), list(pred))[0],
        "holdout_share_reaching_classifier": float(reaches.mean()),
        "holdout_share_using_deep_embedding": float(used_deep.mean()),
        "holdout_cascade_coverage": coverage,
        "holdout_auto_accuracy": float((answers == y_hold)[auto].mean()) if auto.any() else 0.0,
        "holdout_rules_cache_share": float((~reaches).mean()),
        "holdout_rules_cache_accuracy": done[1] / done[0] if done[0] else 0.0,
        "holdout_classifier_share": float((reaches & (conf >= threshold)).mean()),
        "holdout_classifier_accuracy": (float(correct[reaches & (conf >= threshold)].mean())
                                        if (reaches & (conf >= threshold)).any() else 0.0),
        "fast_temperature": clf.fast_temperature,
        "deep_temperature": clf.deep_temperature,
    }
    info = BundleInfo(
        version=version,
        created_at=created.isoformat(),
        data_hash=data_hash,
        n_train=len(idx_fit),
        labels=final.labels,
        departments={label: departments.get(label, label) for label in final.labels},
        embedding_model_id=embedder.model_id,
        deep_embedding_model_id=deep_embedder.model_id if deep_embedder else None,
        rules_version=rules.version,
        classifier_threshold=threshold,
        fast_threshold=final.fast_threshold,
        params=asdict(params),
        metrics=metrics,
        kept_in_fit=split.kept_in_fit,
    )
    bundle = ModelBundle(info=info, classifier=final)
    save_track_record_seeds(bundle.save(settings.models_dir, make_current=False),
                            embedder.model_id, seeds)
    if make_current:  # serving it now: the cache's track record goes with it
        set_current(settings.models_dir, version)
        with db.begin() as conn:
            seed_track_record(conn, embedder.model_id, seeds)
    report = TrainReport(
        version=version, n_train=len(idx_fit), n_holdout=len(idx_hold), labels=len(counts),
        holdout_accuracy=float(accuracy_score(y_hold, pred)),
        holdout_macro_f1=metrics["holdout_macro_f1"], threshold=threshold,
        holdout_cascade_coverage=coverage, fast_threshold=final.fast_threshold,
        fit_seconds=round(fit_seconds, 1), cache_seeded_labels=len(seeds),
        kept_in_fit=split.kept_in_fit,
        fit_ids=take(idx_fit, ids), fit_labels=take(idx_fit, labels),
        fit_hashes=take(idx_fit, hashes), holdout_ids=take(idx_hold, ids),
        holdout_true=list(y_hold), holdout_pred=[str(p) for p in pred],
        holdout_hashes=take(idx_hold, hashes), holdout_texts=take(idx_hold, texts),
    )
    return bundle, report

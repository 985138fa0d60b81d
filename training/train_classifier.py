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

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score

from cca.bundle import BundleInfo, ModelBundle, save_track_record_seeds, set_current
from cca.classifier import ClassifierParams, TieredClassifier
from cca.embeddings import Embedder
from cca.errors import StateError
from cca.operating_points import Evidence, OperatingPoints, Targets, Unknowns, choose
from cca.settings import Settings
from cca.store import Database
from cca.store.vectors import seed_track_record
from rules import RuleSet, load_rules
from training.holdout import Split, split_by_id
from training.holdout_cascade import (
    EarlierStages,
    HoldoutCascade,
    describe_points,
    earlier_done,
    score_holdout,
)
from training.labelled_set import (
    CacheTrackRecord,
    LabelledSet,
    TrainProgress,
    cache_track_record,
    load_labelled_set,
    take,
)
from training.operating import fit_trust, out_of_fold

# Called with the fit and holdout frames (columns id, text, label) before anything is fitted;
# raises to stop training (the data validation step plugs in here).
Validator = Callable[[pd.DataFrame, pd.DataFrame], None]


@dataclass(frozen=True)
class TrainOptions:
    """How to train, beyond the data, the embedding models and the department map."""

    params: ClassifierParams = field(default_factory=ClassifierParams)
    progress: TrainProgress | None = None
    since: datetime | None = None  # labels given since then; None: all of them
    # False saves the bundle (with its track-record seeds) without pointing CURRENT at it or
    # touching the serving cache: a candidate serves only once the promotion gate lets it.
    make_current: bool = True
    validate: Validator | None = None


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


@dataclass(frozen=True)
class _Fitted:
    """A fitted classifier and what it was fitted and scored on."""

    data: LabelledSet
    split: Split
    clf: TieredClassifier
    holdout: HoldoutCascade
    cache: CacheTrackRecord
    rules_version: str
    fit_seconds: float
    points: OperatingPoints


def _quiet(_msg: str) -> None:
    pass


def train_from_store(
    settings: Settings,
    db: Database,
    embedder: Embedder,
    departments: dict[str, str],
    deep_embedder: Embedder | None = None,
    *,
    options: TrainOptions | None = None,
) -> tuple[ModelBundle, TrainReport]:
    """Train on the validated labels of the window and save a bundle (see ``TrainOptions``).

    ``departments`` maps labels to departments in the bundle (a label missing from it is its
    own department).
    """
    opts = options or TrainOptions()
    fitted = _fit(settings, db, (embedder, deep_embedder), opts, departments)
    info = _bundle_info(fitted, (embedder, deep_embedder), departments, opts.params)
    bundle = ModelBundle(info=info, classifier=fitted.clf)
    seeds = fitted.cache.seeds
    save_track_record_seeds(bundle.save(settings.models_dir, make_current=False),
                            embedder.model_id, seeds)
    if opts.make_current:  # serving it now: the cache's track record goes with it
        set_current(settings.models_dir, info.version)
        with db.begin() as conn:
            seed_track_record(conn, embedder.model_id, seeds)
    return bundle, _report(fitted, info)


def _fit(settings: Settings, db: Database, embedders: tuple[Embedder, Embedder | None],
         opts: TrainOptions, departments: dict[str, str]) -> _Fitted:
    """Read, split and validate the data, fit on one part, calibrate and score on the other."""
    say = opts.progress or _quiet
    data = load_labelled_set(db, embedders, opts.since, say)
    say("estimating the cache track record (leave-one-out on the index)")
    cache = cache_track_record(settings, db, embedders[0].model_id, data)
    rules = load_rules(settings.rules_path)
    split = _split(settings, data)
    idx_fit, idx_hold = np.asarray(split.fit), np.asarray(split.holdout)
    if opts.validate is not None:
        opts.validate(data.frame(idx_fit), data.frame(idx_hold))
    t0 = time.perf_counter()
    say(split.describe())
    fit, hold = data.rows(idx_fit), data.rows(idx_hold)
    clf = TieredClassifier(params=opts.params).fit(fit.texts, fit.vectors, fit.deep, fit.labels)
    clf.calibrate(hold.texts, hold.vectors, hold.deep, hold.labels)
    points = _operating_points(settings, data, idx_fit, clf, cache, rules, departments, say)
    earlier = EarlierStages.on(data, split.holdout, rules, cache, settings.rules_min_confidence)
    holdout = score_holdout(clf, hold, earlier, settings.classifier_target_precision,
                            points=points, neighbours=[cache.neighbours[i] for i in idx_hold])
    say(holdout.describe())
    return _Fitted(data=data, split=split, clf=clf, holdout=holdout, cache=cache,
                   rules_version=rules.version, fit_seconds=time.perf_counter() - t0,
                   points=points)


def _operating_points(settings: Settings, data: LabelledSet, idx_fit: np.ndarray,
                      clf: TieredClassifier, cache: CacheTrackRecord, rules: RuleSet,
                      departments: dict[str, str], say: TrainProgress) -> OperatingPoints:
    """Out-of-fold evidence, the trust model (kept on ``clf``) and the per-class thresholds."""
    oof = out_of_fold(clf, data, idx_fit, settings.operating_folds, say, settings.random_seed)
    trust = fit_trust(oof, data, idx_fit, [cache.neighbours[i] for i in idx_fit],
                      settings.cache_top_k, settings.unknown_weight, settings.random_seed)
    clf.trust = trust.model
    earlier = EarlierStages.on(data, list(idx_fit), rules, cache, settings.rules_min_confidence)
    reaches = np.array([e is None for e in earlier.answers])
    answered, right = earlier_done(earlier.answers, np.asarray(data.labels)[idx_fit])
    evidence = Evidence(score=trust.score[reaches], pred=trust.pred[reaches],
                        correct=trust.correct[reaches], earlier_answered=answered,
                        earlier_correct=right, n_total=len(idx_fit),
                        earlier_by_label=earlier.by_label(np.asarray(data.labels)[idx_fit]))
    targets = Targets.load(settings.precision_targets, settings.classifier_target_precision,
                           settings.class_min_precision)
    points = choose(evidence, clf.labels, departments, targets, settings.guarantee_confidence,
                    settings.operating_folds,
                    Unknowns(trust.unknown_score, trust.unknown_pred, settings.unknown_rejection))
    say(describe_points(points))
    return points


def _split(settings: Settings, data: LabelledSet) -> Split:
    split = split_by_id(data.ids, data.labels, settings.train_holdout_fraction, texts=data.texts)
    if not split.holdout:
        raise StateError(f"the holdout is empty ({len(data.ids)} labelled tickets at "
                         f"train_holdout_fraction={settings.train_holdout_fraction}): "
                         "label more tickets or raise CCA_TRAIN_HOLDOUT_FRACTION")
    return split


def _bundle_info(fitted: _Fitted, embedders: tuple[Embedder, Embedder | None],
                 departments: dict[str, str], params: ClassifierParams) -> BundleInfo:
    """What the bundle says about itself: a version named after the time and the data."""
    clf, embedder, deep_embedder = fitted.clf, *embedders
    data_hash = fitted.data.data_hash()
    created = datetime.now(UTC)
    return BundleInfo(
        version=f"clf-{created:%Y%m%dT%H%M%S}-{data_hash[:8]}",
        created_at=created.isoformat(),
        data_hash=data_hash,
        n_train=len(fitted.split.fit),
        labels=clf.labels,
        departments={label: departments.get(label, label) for label in clf.labels},
        embedding_model_id=embedder.model_id,
        deep_embedding_model_id=deep_embedder.model_id if deep_embedder else None,
        rules_version=fitted.rules_version,
        classifier_threshold=fitted.holdout.threshold,
        fast_threshold=clf.fast_threshold,
        params=asdict(params),
        metrics={**fitted.holdout.metrics(), **fitted.points.summary(), **fitted.cache.metrics(),
                 "fast_temperature": clf.fast_temperature,
                 "deep_temperature": clf.deep_temperature},
        kept_in_fit=fitted.split.kept_in_fit,
        operating_points=fitted.points.to_dict(),
    )


def _report(fitted: _Fitted, info: BundleInfo) -> TrainReport:
    data, holdout = fitted.data, fitted.holdout
    idx_fit, idx_hold = np.asarray(fitted.split.fit), np.asarray(fitted.split.holdout)
    return TrainReport(
        version=info.version, n_train=len(idx_fit), n_holdout=len(idx_hold),
        labels=data.n_classes, holdout_accuracy=float(accuracy_score(holdout.truth, holdout.pred)),
        holdout_macro_f1=info.metrics["holdout_macro_f1"], threshold=holdout.threshold,
        holdout_cascade_coverage=holdout.coverage, fast_threshold=fitted.clf.fast_threshold,
        fit_seconds=round(fitted.fit_seconds, 1), cache_seeded_labels=len(fitted.cache.seeds),
        kept_in_fit=fitted.split.kept_in_fit,
        fit_ids=take(data.ids, idx_fit), fit_labels=take(data.labels, idx_fit),
        fit_hashes=take(data.hashes, idx_fit), holdout_ids=take(data.ids, idx_hold),
        holdout_true=list(holdout.truth), holdout_pred=[str(p) for p in holdout.pred],
        holdout_hashes=take(data.hashes, idx_hold), holdout_texts=take(data.texts, idx_hold),
    )

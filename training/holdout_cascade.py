"""The fitted classifier scored on the holdout as a stage of the cascade.

The classifier only sees what the rules and the cache pass on, so its review threshold is
chosen for the cascade as a whole: rules + cache + classifier must meet the target precision
on the holdout. The metrics saved with the bundle describe that cascade stage by stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cca.classifier import TieredClassifier, threshold_for_precision
from cca.operating_points import OperatingPoints
from cca.scope import TrustModel, features, neighbour_signals
from cca.tickets import Neighbour
from rules import RuleSet
from training.holdout import holdout_f1
from training.labelled_set import CacheTrackRecord, LabelledSet, Rows


@dataclass(frozen=True)
class EarlierStages:
    """Per holdout ticket, what the rules or the cache answered (None: the classifier's)."""

    answers: list[str | None]

    @classmethod
    def on(cls, data: LabelledSet, holdout: list[int], rules: RuleSet,
           cache: CacheTrackRecord, min_rule_confidence: float) -> EarlierStages:
        answers: list[str | None] = []
        for i in holdout:
            hit = rules.apply(data.tickets[i])
            if hit.label and hit.confidence >= min_rule_confidence:
                answers.append(hit.label)
            else:
                answers.append(cache.answer(i))
        return cls(answers)

    def by_label(self, truth: np.ndarray) -> dict[str, tuple[int, int]]:
        """Per answered label: (right, answered)."""
        out: dict[str, list[int]] = {}
        for answer, label in zip(self.answers, truth, strict=True):
            if answer is not None:
                counts = out.setdefault(answer, [0, 0])
                counts[0] += int(answer == label)
                counts[1] += 1
        return {k: (r, n) for k, (r, n) in out.items()}


@dataclass(frozen=True)
class HoldoutCascade:
    """The classifier's answers on the holdout, behind the rules and the cache."""

    truth: np.ndarray
    pred: np.ndarray
    conf: np.ndarray
    used_deep: np.ndarray  # where the deep tier was needed
    earlier: list[str | None]
    threshold: float  # one review threshold on the probability (CCA_CLASSIFIER_THRESHOLD)
    # Per-class operating points on the trust score; without them, ``threshold`` applies.
    points: OperatingPoints | None = None
    trust: np.ndarray | None = None

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.truth

    @property
    def reaches(self) -> np.ndarray:
        """Where neither the rules nor the cache answered."""
        return np.array([e is None for e in self.earlier])

    @property
    def sure(self) -> np.ndarray:
        """Where the classifier answers (not sent to review)."""
        if self.points is None or self.trust is None:
            return self.reaches & (self.conf >= self.threshold)
        accepted = np.array([self.points.accepts(str(p), float(t))
                             for p, t in zip(self.pred, self.trust, strict=True)], dtype=bool)
        return self.reaches & accepted

    @property
    def coverage(self) -> float:
        return float((~self.reaches).mean() + self.sure.mean())

    def describe(self) -> str:
        answered, right = earlier_done(self.earlier, self.truth)
        auto = self.metrics()["holdout_auto_accuracy"]
        return (f"holdout accuracy {self.correct.mean():.4f} (MiniLM on "
                f"{self.used_deep.mean():.0%}); rules+cache answer {1 - self.reaches.mean():.1%}"
                f" ({right / max(answered, 1):.2%} right); cascade covers {self.coverage:.1%}"
                f" at {auto:.2%} right")

    def metrics(self) -> dict[str, float]:
        """The holdout metrics saved with the bundle, stage by stage."""
        reaches, correct = self.reaches, self.correct
        answered, right = earlier_done(self.earlier, self.truth)
        auto = (~reaches) | self.sure
        answers = np.where(reaches, self.pred,
                           np.asarray([e or "" for e in self.earlier], dtype=object))
        return {
            "holdout_accuracy": float(correct.mean()),
            "holdout_macro_f1": holdout_f1(list(self.truth), list(self.pred))[0],
            "holdout_share_reaching_classifier": float(reaches.mean()),
            "holdout_share_using_deep_embedding": float(self.used_deep.mean()),
            "holdout_cascade_coverage": self.coverage,
            "holdout_auto_accuracy": (float((answers == self.truth)[auto].mean())
                                      if auto.any() else 0.0),
            "holdout_rules_cache_share": float((~reaches).mean()),
            "holdout_rules_cache_accuracy": right / answered if answered else 0.0,
            "holdout_classifier_share": float(self.sure.mean()),
            "holdout_classifier_accuracy": (float(correct[self.sure].mean())
                                            if self.sure.any() else 0.0),
        }


def earlier_done(earlier: list[str | None], truth: np.ndarray) -> tuple[int, int]:
    """How many holdout tickets the rules and cache answered, and how many of them right."""
    reaches = np.array([e is None for e in earlier])
    return (int((~reaches).sum()),
            int(sum(e == t for e, t in zip(earlier, truth, strict=True) if e is not None)))


def score_holdout(clf: TieredClassifier, holdout: Rows, earlier: EarlierStages,
                  target_precision: float, points: OperatingPoints | None = None,
                  neighbours: list[list[Neighbour]] | None = None) -> HoldoutCascade:
    """Predict the holdout, and score the operating points chosen out of fold on it (plus one
    common probability threshold meeting the target, for ``CCA_CLASSIFIER_THRESHOLD``)."""
    deep = holdout.deep
    parts = clf.predict_parts(holdout.texts, holdout.vectors,
                              None if deep is None else (lambda r: deep[r]))
    proba = parts.proba()
    truth = np.asarray(holdout.labels)
    pred = np.asarray(clf.labels)[proba.argmax(axis=1)]
    conf = proba.max(axis=1)
    correct = pred == truth
    reaches = np.array([e is None for e in earlier.answers])
    threshold = threshold_for_precision(conf[reaches], correct[reaches], target_precision,
                                        already=earlier_done(earlier.answers, truth))
    trust = None
    if isinstance(clf.trust, TrustModel) and neighbours is not None:
        sim, agree = neighbour_signals(neighbours, list(pred))
        x, _, _ = features(parts, clf.trust.geometry, holdout.vectors, sim, agree)
        trust = clf.trust.score(x)
    return HoldoutCascade(truth=truth, pred=pred, conf=conf, used_deep=parts.used_deep,
                          earlier=earlier.answers, threshold=threshold, points=points,
                          trust=trust)


def describe_points(points: OperatingPoints) -> str:
    """One line on the operating points, for the training log."""
    summary, overall = points.summary(), points.overall
    text = (f"operating points ({points.folds}-fold out-of-fold evidence): auto-answered "
            f"{summary['oof_auto_precision']:.2%} right (bound "
            f"{summary['oof_auto_precision_bound']:.2%}"
            f" at {points.confidence:.0%} confidence) at {summary['oof_auto_coverage']:.1%} "
            f"coverage; {summary['classes_earned']} classes earned, "
            f"{summary['classes_review']} to review")
    if "unknown_answered" in overall:
        text += f"; simulated unknowns answered {float(overall['unknown_answered']):.1%}"
    if not overall["holds"]:
        text += "; the overall target cannot be met: the classifier answers nothing"
    return text

"""Per-class operating points: when the classifier may answer a class on its own.

Each class gets its own threshold on the classifier's trust score, chosen on out-of-fold
predictions with ``cca.guarantees.fixed_sequence`` so that, with the stated confidence,
(b) the class's own auto-answered precision is at least its minimum, and (a) auto-answered
precision over everything the cascade answers (rules and cache included) is at least the
target. A class whose evidence cannot support its minimum at any threshold is not answered
(its tickets go on to the LLM or review) until a later training run earns it.

Targets come from settings, overridable per department or class in a YAML file (the way
analysts set precision targets per category in service-desk products)::

    target_precision: 0.98        # (a), over all auto-answered tickets
    min_precision: 0.90           # (b), every class
    departments:
      Security & Fraud: {min_precision: 0.97}
    classes:
      lost_or_stolen_card: {min_precision: 0.99}

A class's minimum is its own entry, else its department's, else the default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cca.errors import ConfigError, read_yaml
from cca.guarantees import (
    THRESHOLD_GRID,
    Counts,
    fixed_sequence,
    min_support,
    precision_lower_bound,
)

METHOD = ("Learn-then-Test: fixed-sequence test over a fixed threshold grid, "
          "exact binomial (Clopper-Pearson) bounds")


@dataclass(frozen=True)
class Targets:
    """The precision asked of the cascade as a whole and of each class."""

    target_precision: float = 0.98
    min_precision: float = 0.90
    departments: dict[str, float] = field(default_factory=dict)
    classes: dict[str, float] = field(default_factory=dict)

    def for_class(self, label: str, department: str | None) -> float:
        if label in self.classes:
            return self.classes[label]
        if department is not None and department in self.departments:
            return self.departments[department]
        return self.min_precision

    @classmethod
    def load(cls, path: Path | None, target_precision: float, min_precision: float) -> Targets:
        """Settings' defaults, overridden by the YAML file at ``path`` when there is one."""
        if path is None:
            return cls(target_precision, min_precision)
        doc = read_yaml(path, "precision targets") or {}
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: expected a mapping of precision targets")
        return cls(
            target_precision=_precision(doc.get("target_precision", target_precision), path),
            min_precision=_precision(doc.get("min_precision", min_precision), path),
            departments=_overrides(doc, "departments", path),
            classes=_overrides(doc, "classes", path),
        )


def _precision(value: object, where: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigError(f"{where}: a precision must be a number between 0 and 1 "
                         f"(exclusive), got {value!r}")
    return float(value)


def _overrides(doc: dict, key: str, path: Path) -> dict[str, float]:
    section = doc.get(key) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: '{key}' must map names to {{min_precision: …}}")
    out = {}
    for name, entry in section.items():
        if not isinstance(entry, dict) or set(entry) != {"min_precision"}:
            raise ConfigError(f"{path}: {key}.{name} must be {{min_precision: <0..1>}}")
        out[str(name)] = _precision(entry["min_precision"], f"{path}: {key}.{name}")
    return out


@dataclass
class ClassPoint:
    threshold: float | None  # None: not answered automatically (status "review")
    precision: float  # out-of-fold auto-answered precision at the threshold
    bound: float  # its lower confidence bound
    support: int  # out-of-fold tickets answered at the threshold
    n: int  # out-of-fold tickets predicted as this class that reach the classifier
    expected_coverage: float  # support / n
    target: float
    status: str  # "earned" or "review"
    earlier: int = 0  # answers of this label by the rules and the cache, in precision and bound


@dataclass
class OperatingPoints:
    confidence: float
    folds: int
    target_precision: float
    class_min_precision: float
    overall: dict[str, float | int | bool]
    classes: dict[str, ClassPoint]
    method: str = METHOD

    def threshold(self, label: str) -> float | None:
        point = self.classes.get(label)
        return None if point is None else point.threshold

    def accepts(self, label: str, score: float) -> bool:
        threshold = self.threshold(label)
        return threshold is not None and score >= threshold

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict) -> OperatingPoints | None:
        if not doc:
            return None
        classes = {k: ClassPoint(**v) for k, v in doc["classes"].items()}
        return cls(**{**doc, "classes": classes})

    def summary(self) -> dict[str, float]:
        """Flat figures for the bundle metrics and MLflow."""
        earned = sum(p.status == "earned" for p in self.classes.values())
        return {"oof_auto_precision": float(self.overall["precision"]),
                "oof_auto_precision_bound": float(self.overall["bound"]),
                "oof_auto_coverage": float(self.overall["coverage"]),
                "classes_earned": earned, "classes_review": len(self.classes) - earned}


@dataclass(frozen=True)
class Evidence:
    """Out-of-fold predictions of the tickets the classifier would see, and what the earlier
    stages answered of the rest (their answers count towards the overall precision)."""

    score: np.ndarray  # the trust score the thresholds apply to
    pred: np.ndarray  # predicted label
    correct: np.ndarray  # bool
    earlier_answered: int
    earlier_correct: int
    n_total: int  # all tickets, earlier stages' included
    # Per label: (right, answered) by the rules and the cache. A class's automatic answers are
    # theirs plus the classifier's, so its precision is judged on both.
    earlier_by_label: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Unknowns:
    """Trust scores and predicted labels of simulated unknown tickets, and the share of them
    to send to review: a floor on the common level, measured rather than guaranteed."""

    score: np.ndarray
    pred: np.ndarray
    rejection: float


START_SHARE = 0.5  # a class's sequence starts where it answers half of its tickets


def choose(evidence: Evidence, labels: list[str], departments: dict[str, str],
           targets: Targets, confidence: float = 0.95, folds: int = 0,
           unknowns: Unknowns | None = None) -> OperatingPoints:
    """Per-class floors for (b), then the overall level for (a); see the module docstring."""
    floors = {}
    for label in labels:
        mask = evidence.pred == label
        before = evidence.earlier_by_label.get(label, (0, 0))
        floors[label] = fixed_sequence(
            _counter(evidence.score[mask], evidence.correct[mask], before),
            targets.for_class(label, departments.get(label)), confidence,
            start=before[1] + math.ceil(START_SHARE * int(mask.sum())))
    level = _overall_level(evidence, floors, targets.target_precision, confidence)
    if level is not None and unknowns is not None:
        level = max(level, _unknown_level(unknowns, floors))
    classes = {}
    for label in labels:
        mask = evidence.pred == label
        floor = floors[label]
        threshold = None if floor is None or level is None else max(floor[0], level)
        target = targets.for_class(label, departments.get(label))
        classes[label] = _point(evidence.score[mask], evidence.correct[mask], threshold,
                                target, confidence, evidence.earlier_by_label.get(label, (0, 0)))
    overall = _overall(evidence, classes, level is not None, confidence)
    if unknowns is not None:
        overall["unknown_answered"] = _unknown_answered(unknowns, classes)
    return OperatingPoints(
        confidence=confidence, folds=folds, target_precision=targets.target_precision,
        class_min_precision=targets.min_precision, overall=overall, classes=classes)


def _unknown_level(unknowns: Unknowns, floors: dict[str, tuple[float, int, int] | None]
                   ) -> float:
    """The lowest grid level at which at most ``1 - rejection`` of the unknowns are answered."""
    floor_of = np.array([floors[p][0] if floors.get(p) else np.inf for p in unknowns.pred])
    chosen = THRESHOLD_GRID[0]
    for level in THRESHOLD_GRID:
        answered = float((unknowns.score >= np.maximum(floor_of, level)).mean())
        if answered > 1 - unknowns.rejection:
            break
        chosen = level
    return chosen


def _unknown_answered(unknowns: Unknowns, classes: dict[str, ClassPoint]) -> float:
    threshold = _thresholds(classes, unknowns.pred)
    return float((unknowns.score >= threshold).mean()) if len(threshold) else 0.0


def _counter(score: np.ndarray, correct: np.ndarray,
             before: tuple[int, int] = (0, 0)) -> Counts:
    """(right, answered) at a threshold, on top of ``before`` (the earlier stages')."""
    order = np.argsort(-score)
    sorted_score, hits = score[order], np.cumsum(correct[order])

    def counts(threshold: float) -> tuple[int, int]:
        answered = int(np.searchsorted(-sorted_score, -threshold, side="right"))
        return (before[0] + (int(hits[answered - 1]) if answered else 0),
                before[1] + answered)

    return counts


def _overall_level(evidence: Evidence, floors: dict[str, tuple[float, int, int] | None],
                   target: float, confidence: float) -> float | None:
    """The lowest common level at which the whole cascade still meets ``target``."""
    floor_of = np.array([floors[p][0] if floors.get(p) else np.inf for p in evidence.pred])

    def counts(level: float) -> tuple[int, int]:
        answer = evidence.score >= np.maximum(floor_of, level)
        return (evidence.earlier_correct + int(evidence.correct[answer].sum()),
                evidence.earlier_answered + int(answer.sum()))

    if evidence.earlier_answered >= min_support(target, confidence) and precision_lower_bound(
            evidence.earlier_correct, evidence.earlier_answered, confidence) < target:
        return None  # the earlier stages alone break the target: the classifier stays closed
    found = fixed_sequence(counts, target, confidence, THRESHOLD_GRID)
    return None if found is None else found[0]


def _point(score: np.ndarray, correct: np.ndarray, threshold: float | None, target: float,
           confidence: float, before: tuple[int, int]) -> ClassPoint:
    """The class at its threshold; precision and bound count the earlier stages' answers of
    this label too (``support`` and coverage are the classifier's own)."""
    n = len(score)
    if threshold is None:
        return ClassPoint(None, 0.0, 0.0, 0, n, 0.0, target, "review")
    answer = score >= threshold
    support = int(answer.sum())
    total, right = support + before[1], int(correct[answer].sum()) + before[0]
    return ClassPoint(
        threshold=float(threshold), precision=right / total if total else 0.0,
        bound=round(precision_lower_bound(right, total, confidence), 6), support=support,
        n=n, expected_coverage=support / n if n else 0.0, target=target, status="earned",
        earlier=before[1])


def _overall(evidence: Evidence, classes: dict[str, ClassPoint], holds: bool,
             confidence: float) -> dict[str, float | int | bool]:
    threshold = _thresholds(classes, evidence.pred)
    answer = evidence.score >= threshold
    answered = evidence.earlier_answered + int(answer.sum())
    right = evidence.earlier_correct + int(evidence.correct[answer].sum())
    return {"precision": right / answered if answered else 0.0,
            "bound": round(precision_lower_bound(right, answered, confidence), 6),
            "support": answered,
            "coverage": answered / evidence.n_total if evidence.n_total else 0.0,
            "holds": holds}


def _thresholds(classes: dict[str, ClassPoint], predicted: np.ndarray) -> np.ndarray:
    """Each ticket's class threshold; infinity where the class answers nothing."""
    return np.array([t if (t := getattr(classes.get(p), "threshold", None)) is not None
                     else np.inf for p in predicted], dtype=float)

"""The promotion gate: a pure function, so the rule that decides what serves is easy to test.

A candidate becomes champion only if (1) its holdout macro-F1 reaches the floor, (2) it is
not worse than the champion on the same holdout (within a tolerance), and (3) no class the
champion was scored on loses more than the allowed F1. Averages hide a class that collapses,
which is what (3) is for. Classes the champion kept whole in its fit (it saw their holdout
tickets) are left out of (2) and (3); a champion that could not be scored (other embedding
models) refuses promotion rather than counting as "no champion". All scores are plain dicts
so they travel as Airflow XComs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from training.results import Registration, Scores

if TYPE_CHECKING:
    from cca.settings import Settings


@dataclass(frozen=True)
class GatePolicy:
    min_macro_f1: float = 0.88
    max_class_drop: float = 0.05
    tolerance: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> GatePolicy:
        return cls(min_macro_f1=settings.promotion_min_macro_f1,
                   max_class_drop=settings.promotion_max_class_drop,
                   tolerance=settings.promotion_tolerance)


@dataclass
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # why it was refused; empty if passed
    notes: list[str] = field(default_factory=list)  # what was checked, for the record


def _macro(per_class: dict[str, float], labels: list[str]) -> float:
    return round(sum(per_class.get(label, 0.0) for label in labels) / len(labels), 6)


def promotion_gate(candidate: Scores, champion: Scores | None, policy: GatePolicy,
                   champion_saw: Iterable[str] = ()) -> GateResult:
    """Every reason the candidate may not replace the champion (none means promote).

    ``champion_saw``: classes the champion was fit on whole (``kept_in_fit``); they are not
    compared, and the macro-F1 comparison is over the remaining classes.
    """
    reasons: list[str] = []
    notes: list[str] = []
    macro = candidate["macro_f1"]
    if macro < policy.min_macro_f1:
        reasons.append(f"macro-F1 {macro:.4f} < required {policy.min_macro_f1:.4f}")
    if champion is None:
        notes.append("no champion to compare with")
        return GateResult(passed=not reasons, reasons=reasons, notes=notes)
    seen = sorted(set(champion_saw) & set(champion["per_class_f1"]))
    compared = sorted(set(champion["per_class_f1"]) - set(seen))
    champ_macro, macro = champion["macro_f1"], candidate["macro_f1"]
    if seen:
        notes.append(f"not compared, the champion was fit on their holdout tickets "
                     f"(kept whole in its fit): {', '.join(seen)}")
        if compared:
            champ_macro = _macro(champion["per_class_f1"], compared)
            macro = _macro(candidate["per_class_f1"], compared)
    floor = champ_macro - policy.tolerance
    if (compared or not seen) and macro < floor:
        reasons.append(f"macro-F1 {macro:.4f} < champion's {champ_macro:.4f}"
                       + (f" - tolerance {policy.tolerance:.4f}" if policy.tolerance else "")
                       + (f" (on the {len(compared)} classes compared)" if seen else ""))
    drops = []
    for label in compared:
        before = champion["per_class_f1"][label]
        after = candidate["per_class_f1"].get(label, 0.0)
        if before - after > policy.max_class_drop + 1e-9:
            drops.append((before - after, label, before, after))
    if drops:
        drops.sort(reverse=True)
        worst = ", ".join(f"{label} {before:.3f}->{after:.3f}"
                          for _, label, before, after in drops[:5])
        more = f" and {len(drops) - 5} more" if len(drops) > 5 else ""
        reasons.append(f"{len(drops)} class(es) drop more than {policy.max_class_drop:.3f} F1: "
                       f"{worst}{more}")
    notes.append(f"champion macro-F1 {champ_macro:.4f}, candidate {macro:.4f}")
    return GateResult(passed=not reasons, reasons=reasons, notes=notes)


def gate_decision(registered: Registration, current: str | None,
                  policy: GatePolicy) -> GateResult:
    """The gate on a registered candidate (the result of ``steps.register_candidate``).

    ``current`` is the champion's version now. Refused as well: a champion that changed since
    the evaluation, and one that could not be scored on this holdout (other embeddings).
    """
    evaluation = registered.evaluation
    champ = evaluation.champion
    scores = champ.scores if champ else None
    result = promotion_gate(evaluation.candidate_scores, scores, policy,
                            champ.kept_in_fit if champ else ())
    if champ and scores is None:
        result.notes.remove("no champion to compare with")
        result.reasons.append(
            f"champion v{champ.version} was trained with embeddings "
            f"{tuple(champ.embeddings)}, not the configured {tuple(champ.configured)}; "
            f"cannot compare on the same holdout: promote by hand with "
            f"`cca promote {registered.model_version}` if intended")
    kept = evaluation.candidate.kept_in_fit
    if kept:
        result.notes.append(f"not scored, kept whole in the candidate's fit: {', '.join(kept)}")
    evaluated = champ.version if champ else None
    if current != evaluated:
        result.reasons.append(f"champion changed since evaluation "
                              f"(v{evaluated} -> v{current}): re-evaluate")
    result.passed = not result.reasons
    return result

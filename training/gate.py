"""The promotion gate: a pure function, so the rule that decides what serves is easy to test.

A candidate becomes champion only if (1) its holdout macro-F1 reaches the floor, (2) it is
not worse than the champion on the same holdout (within a tolerance), and (3) no class the
champion was scored on loses more than the allowed F1. Averages hide a class that collapses,
which is what (3) is for. All scores are plain dicts so they travel as Airflow XComs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from cca.settings import Settings


class Scores(TypedDict):
    macro_f1: float
    per_class_f1: dict[str, float]


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


def promotion_gate(candidate: Scores, champion: Scores | None, policy: GatePolicy) -> GateResult:
    """Every reason the candidate may not replace the champion (none means promote)."""
    reasons: list[str] = []
    notes: list[str] = []
    macro = candidate["macro_f1"]
    if macro < policy.min_macro_f1:
        reasons.append(f"macro-F1 {macro:.4f} < required {policy.min_macro_f1:.4f}")
    if champion is None:
        notes.append("no champion to compare with")
        return GateResult(passed=not reasons, reasons=reasons, notes=notes)
    floor = champion["macro_f1"] - policy.tolerance
    if macro < floor:
        reasons.append(f"macro-F1 {macro:.4f} < champion's {champion['macro_f1']:.4f}"
                       + (f" - tolerance {policy.tolerance:.4f}" if policy.tolerance else ""))
    drops = []
    for label, before in sorted(champion["per_class_f1"].items()):
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
    notes.append(f"champion macro-F1 {champion['macro_f1']:.4f}, candidate {macro:.4f}")
    return GateResult(passed=not reasons, reasons=reasons, notes=notes)

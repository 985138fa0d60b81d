"""The promotion gate: a pure function, so the rule that decides what serves is easy to test.

A candidate becomes champion only if (1) its holdout macro-F1 reaches the floor, (2) it is
not worse than the champion on the same holdout (within a tolerance), (3) no class the
champion was scored on loses more than the allowed F1, and (4) it keeps the precision
guarantee the champion had: its overall out-of-fold precision bound holds where the
champion's held, and no class the champion had earned is sent to review. Averages hide a
class that collapses, which is what (3) is for; (4) is there because a better F1 is no
excuse for answering on evidence that no longer supports the promised precision.

Classes the champion kept whole in its fit (it saw their holdout tickets) are left out of
(2) and (3); a champion that could not be scored (other embedding models) refuses promotion
rather than counting as "no champion"; bundles trained before operating points existed are
not compared on (4). All scores are plain dicts so they travel as Airflow XComs, and the
result carries the figures behind the decision so MLflow can show why, not only what.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from training.results import Registration, Scores

if TYPE_CHECKING:
    from cca.settings import Settings

_NAMED = 5  # classes named in one reason; the rest are counted


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
    # The figures behind the decision (None where there was nothing to compare), so the
    # registry can show the comparison: macro-F1 on the classes compared, the largest
    # per-class F1 fall (negative: every compared class improved) and its class.
    candidate_macro_f1: float | None = None
    champion_macro_f1: float | None = None
    worst_class: str | None = None
    worst_class_drop: float | None = None

    @property
    def delta_macro_f1(self) -> float | None:
        if self.candidate_macro_f1 is None or self.champion_macro_f1 is None:
            return None
        return round(self.candidate_macro_f1 - self.champion_macro_f1, 6)


def _macro(per_class: dict[str, float], labels: list[str]) -> float:
    return round(sum(per_class.get(label, 0.0) for label in labels) / len(labels), 6)


def _named(labels: list[str]) -> str:
    more = f" and {len(labels) - _NAMED} more" if len(labels) > _NAMED else ""
    return ", ".join(labels[:_NAMED]) + more


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
        return GateResult(passed=not reasons, reasons=reasons, notes=notes,
                          candidate_macro_f1=macro)
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
    falls = sorted(((round(champion["per_class_f1"][label]
                           - candidate["per_class_f1"].get(label, 0.0), 6), label)
                    for label in compared), key=lambda t: (-t[0], t[1]))
    drops = [(fall, label) for fall, label in falls if fall > policy.max_class_drop + 1e-9]
    if drops:
        worst = ", ".join(f"{label} {champion['per_class_f1'][label]:.3f}->"
                          f"{candidate['per_class_f1'].get(label, 0.0):.3f}"
                          for _, label in drops[:_NAMED])
        more = f" and {len(drops) - _NAMED} more" if len(drops) > _NAMED else ""
        reasons.append(f"{len(drops)} class(es) drop more than {policy.max_class_drop:.3f} F1: "
                       f"{worst}{more}")
    notes.append(f"champion macro-F1 {champ_macro:.4f}, candidate {macro:.4f}")
    return GateResult(passed=not reasons, reasons=reasons, notes=notes,
                      candidate_macro_f1=macro, champion_macro_f1=champ_macro,
                      worst_class=falls[0][1] if falls else None,
                      worst_class_drop=falls[0][0] if falls else None)


def guarantee_summary(operating_points: dict[str, Any]) -> dict[str, Any]:
    """What the gate compares of a bundle's operating points (``cca.bundle.BundleInfo``):
    whether the overall bound held, and which classes earned a threshold. ``{}`` for a bundle
    trained before operating points existed. Small, so it travels in the XComs."""
    if not operating_points:
        return {}
    overall = operating_points.get("overall", {})
    classes = operating_points.get("classes", {})
    return {"holds": bool(overall.get("holds")), "bound": overall.get("bound"),
            "target": operating_points.get("target_precision"),
            "earned": sorted(c for c, op in classes.items() if op.get("status") == "earned"),
            "review": sorted(c for c, op in classes.items() if op.get("status") != "earned")}


def guarantee_reasons(candidate: dict[str, Any], champion: dict[str, Any],
                      champion_version: str) -> list[str]:
    """Refusals for a candidate that loses the champion's precision guarantee: the overall
    bound no longer holding, or a class the champion had earned now sent to review (named).
    Either side without operating points (``{}``) is not compared."""
    if not candidate or not champion:
        return []
    reasons = []
    if champion["holds"] and not candidate["holds"]:
        reasons.append(f"precision guarantee fails: overall bound {_fmt(candidate['bound'])} "
                       f"< target {_fmt(candidate['target'])}, where champion "
                       f"v{champion_version}'s held ({_fmt(champion['bound'])})")
    lost = sorted(set(champion["earned"]) & set(candidate["review"]))
    if lost:
        reasons.append(f"{len(lost)} class(es) earned by champion v{champion_version} would go "
                       f"to review: {_named(lost)}")
    return reasons


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def gate_decision(registered: Registration, current: str | None,
                  policy: GatePolicy) -> GateResult:
    """The gate on a registered candidate (the result of ``steps.register_candidate``).

    ``current`` is the champion's version now. Refused as well: a champion that changed since
    the evaluation, one that could not be scored on this holdout (other embeddings), and a
    candidate that loses the champion's precision guarantee.
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
    if champ:
        ours, theirs = evaluation.candidate.guarantee, champ.guarantee
        result.reasons.extend(guarantee_reasons(ours, theirs, champ.version))
        if not (ours and theirs):
            result.notes.append("precision guarantee not compared: "
                                + ("the candidate" if not ours else f"champion v{champ.version}")
                                + " has no operating points")
    kept = evaluation.candidate.kept_in_fit
    if kept:
        result.notes.append(f"not scored, kept whole in the candidate's fit: {', '.join(kept)}")
    evaluated = champ.version if champ else None
    if current != evaluated:
        result.reasons.append(f"champion changed since evaluation "
                              f"(v{evaluated} -> v{current}): re-evaluate")
    result.passed = not result.reasons
    return result

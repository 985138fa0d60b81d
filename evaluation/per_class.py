"""The per-class table of an evaluation: what each class promised, and what it delivered.

Beside each class's operating point (threshold, lower precision bound, out-of-fold support,
as training chose them) stand its auto-answered precision and coverage on the evaluated
tickets, so a class whose promise does not hold on new data stands out.
"""

from __future__ import annotations

from collections import Counter

from cca.bundle import BundleInfo
from cca.tickets import Decision


def per_class_table(decisions: list[Decision], truths: list[str], info: BundleInfo) -> list[dict]:
    """One row per trained class, worst auto-answered precision first."""
    known = set(info.labels)
    tickets = Counter(t for t in truths if t in known)
    answered: Counter[str] = Counter()
    right: Counter[str] = Counter()
    covered: Counter[str] = Counter()
    for d, truth in zip(decisions, truths, strict=True):
        if d.label is None:
            continue
        answered[d.label] += 1
        right[d.label] += int(d.label == truth)
        covered[truth] += int(d.label == truth)
    points = info.operating_points.get("classes", {}) if info.operating_points else {}
    rows = []
    for label in info.labels:
        point = points.get(label, {})
        n = answered[label]
        rows.append({
            "class": label, "department": info.departments.get(label, label),
            "tickets": tickets[label], "auto_answered": n,
            "auto_precision": round(right[label] / n, 4) if n else None,
            "auto_recall": round(covered[label] / tickets[label], 4) if tickets[label] else None,
            "threshold": point.get("threshold"), "bound": point.get("bound"),
            "support": point.get("support"), "target": point.get("target"),
            "status": point.get("status", "common threshold"),
        })
    rows.sort(key=lambda r: (r["auto_precision"] if r["auto_precision"] is not None else 2.0,
                             r["class"]))
    return rows


def below_target(rows: list[dict]) -> list[str]:
    """Classes whose auto-answered precision on these tickets fell below their target."""
    return [r["class"] for r in rows if r["auto_precision"] is not None
            and r["target"] is not None and r["auto_precision"] < r["target"]]

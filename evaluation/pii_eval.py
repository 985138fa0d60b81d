"""Span-level precision and recall per PII type against a labelled JSONL fixture.

Each fixture record is ``{"text": ..., "spans": [{"start", "end", "type"}]}`` with offsets
into the text as written (fixture texts are already normalised, so offsets need no mapping).
A predicted span matches a gold span when the types agree and the ranges overlap (one-to-one):
for redaction what matters is that the PII is covered, not that the boundary is exact, so
exact-boundary matches are reported alongside.

Records may also carry ``keep`` spans (amounts, dates, card last-4 digits, references, words
that look like names): text the classifier needs, so redacting any part of it is counted
against the keep rate, per keep type.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redaction.detectors import TYPES, Span
from redaction.sanitizer import Sanitizer, normalise

STRUCTURED = tuple(t for t in TYPES if t != "PERSON")
#: Keep types the classifier needs (issue #22's keep-rate target); WORD is reported apart.
KEEP_TARGET = ("AMOUNT", "DATE", "LAST4", "REF")


@dataclass
class TypeScore:
    """Counts for one type; precision/recall are 1.0 when there is nothing to get wrong."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    exact: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    def as_dict(self) -> dict[str, float | int]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "exact": self.exact,
                "precision": round(self.precision, 4), "recall": round(self.recall, 4)}


@dataclass
class KeepScore:
    """How many must-keep spans survived redaction untouched."""

    kept: int = 0
    lost: int = 0

    @property
    def rate(self) -> float:
        return self.kept / (self.kept + self.lost) if self.kept + self.lost else 1.0

    def as_dict(self) -> dict[str, float | int]:
        return {"kept": self.kept, "lost": self.lost, "rate": round(self.rate, 4)}


@dataclass
class EvalReport:
    per_type: dict[str, TypeScore] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    keep: dict[str, KeepScore] = field(default_factory=dict)

    def total(self, types: tuple[str, ...] = TYPES) -> TypeScore:
        scores = [self.per_type[t] for t in types if t in self.per_type]
        return TypeScore(*(sum(getattr(s, k) for s in scores) for k in ("tp", "fp", "fn", "exact")))

    def keep_total(self, types: tuple[str, ...] = KEEP_TARGET) -> KeepScore:
        scores = [self.keep[t] for t in types if t in self.keep]
        return KeepScore(sum(s.kept for s in scores), sum(s.lost for s in scores))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "per_type": {t: s.as_dict() for t, s in sorted(self.per_type.items())},
            "structured": self.total(STRUCTURED).as_dict(),
            "overall": self.total().as_dict(),
        }
        if self.keep:
            out["keep"] = {t: s.as_dict() for t, s in sorted(self.keep.items())}
            out["keep_target_types"] = self.keep_total().as_dict()
        out["errors"] = self.errors
        return out


def load_fixture(path: Path) -> list[dict[str, Any]]:
    """Records of a labelled fixture; fails loudly on text that normalisation would change."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
               if line.strip()]
    for i, rec in enumerate(records, 1):
        if normalise(rec["text"]) != rec["text"]:
            raise ValueError(f"{path.name} record {i}: text is not normalised; offsets would drift")
    return records


def score(gold: list[Span], pred: list[Span], report: EvalReport, text: str) -> None:
    """Add one text's matches to ``report``; unmatched spans are kept as errors for review."""
    unmatched = list(pred)
    for g in gold:
        s = report.per_type.setdefault(g.type, TypeScore())
        hit = next((p for p in unmatched if p.type == g.type
                    and p.start < g.end and g.start < p.end), None)
        if hit is None:
            s.fn += 1
            report.errors.append({"kind": "fn", "type": g.type, "text": text[g.start:g.end]})
            continue
        unmatched.remove(hit)
        s.tp += 1
        s.exact += (hit.start, hit.end) == (g.start, g.end)
    for p in unmatched:
        report.per_type.setdefault(p.type, TypeScore()).fp += 1
        report.errors.append({"kind": "fp", "type": p.type, "text": text[p.start:p.end]})


def score_keep(keep: list[Span], pred: list[Span], report: EvalReport, text: str) -> None:
    """A keep span is lost when any predicted PII span overlaps it."""
    for k in keep:
        s = report.keep.setdefault(k.type, KeepScore())
        hit = next((p for p in pred if p.start < k.end and k.start < p.end), None)
        if hit is None:
            s.kept += 1
        else:
            s.lost += 1
            report.errors.append({"kind": "lost", "type": f"{k.type}->{hit.type}",
                                  "text": text[k.start:k.end]})


def evaluate(sanitizer: Sanitizer, path: Path) -> EvalReport:
    """Run the sanitizer over a labelled fixture and score it per type."""
    records = load_fixture(path)
    results = sanitizer.redact_many([r["text"] for r in records])
    report = EvalReport(per_type={t: TypeScore() for t in TYPES})
    for rec, res in zip(records, results, strict=True):
        gold = [Span(s["start"], s["end"], s["type"]) for s in rec["spans"]]
        score(gold, list(res.spans), report, rec["text"])
        keep = [Span(s["start"], s["end"], s["type"]) for s in rec.get("keep", ())]
        score_keep(keep, list(res.spans), report, rec["text"])
    return report

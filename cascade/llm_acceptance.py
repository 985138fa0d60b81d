"""When an LLM answer may route a ticket: an acceptance rule measured per endpoint and model.

A model's word about itself is no evidence: the local 0.5B model says 0.9 whether right or
wrong, and accepting its answers on that say-so cut the cascade's auto-answered precision
(docs/models.md). So ``cca llm calibrate`` asks the endpoint about labelled tickets the
cascade would pass on to it, sorts every answer into a cell of a small grid of features that
cost no extra call (where its label sits in the classifier's ranking, whether the nearest
neighbours carry it, the model's own confidence), and counts each cell's right answers.

A cell routes tickets only where its exact (Clopper-Pearson) lower precision bound reaches
the target, tested like the classifier's operating points (``cca.guarantees``): cells in a
fixed order, most plausible first, stopping at the first that fails, so every accepted cell
meets the target with the stated confidence together, not just each on its own; a cell with
too few answers to show the target is skipped. Any other answer, and every answer of an
endpoint never calibrated (or calibrated behind another model), goes to review with the LLM's
label attached as a suggestion: the LLM can save a reviewer time but cannot lower the
precision of what is answered automatically.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cca.guarantees import min_support, precision_lower_bound
from cca.settings import Settings
from cca.store import Database, StoreUnavailable
from cca.store.llm_rules_repo import StoredRule, latest_rule
from cca.tickets import Neighbour

log = logging.getLogger(__name__)

RANKS = ("1", "2", "3+")  # the label's place in the classifier's ranking; 3+: later or absent
NEIGHBOURS = ("majority", "nearest", "none")  # most neighbours carry it / only the nearest / no
CONFIDENCES = ("high", "low")  # the LLM's own confidence at or above the rule's edge, or below
RULE_FORMAT = 1


def target_precision(settings: Settings) -> float:
    """The precision an automatic answer must reach: the cascade's target, so an LLM answer
    is held to the same bar as the stages before it."""
    return settings.classifier_target_precision


def endpoint_key(base_url: str) -> str:
    """One spelling per endpoint (``…/v1`` and ``…/v1/`` are the same server)."""
    return base_url.strip().rstrip("/")


@dataclass(frozen=True)
class Cell:
    rank: str
    neighbours: str
    confidence: str

    @property
    def key(self) -> str:
        return f"rank {self.rank}, neighbours {self.neighbours}, confidence {self.confidence}"


def cell_of(label: str, confidence: float, ranked: Sequence[str],
            neighbours: Sequence[Neighbour], confidence_edge: float) -> Cell:
    """The cell of an answer: what the earlier stages already knew about its label."""
    rank = ranked.index(label) + 1 if label in ranked else 0
    nearest = sorted(neighbours, key=lambda n: -n.similarity)
    agree = sum(n.label == label for n in nearest)
    if nearest and agree * 2 > len(nearest):
        votes = "majority"
    elif nearest and nearest[0].label == label:
        votes = "nearest"
    else:
        votes = "none"
    return Cell(rank=RANKS[rank - 1] if 1 <= rank <= 2 else "3+", neighbours=votes,
                confidence="high" if confidence >= confidence_edge else "low")


def _prior(cell: Cell) -> tuple[int, int, int]:
    rank, votes = RANKS.index(cell.rank), NEIGHBOURS.index(cell.neighbours)
    return CONFIDENCES.index(cell.confidence), rank + votes, rank


# The order cells are tested in, fixed here before any data is seen (which keeps the
# fixed-sequence test valid): high confidence first, then the more the earlier stages agree
# with the answer, the earlier.
ORDER: tuple[Cell, ...] = tuple(sorted(
    (Cell(r, v, c) for r in RANKS for v in NEIGHBOURS for c in CONFIDENCES), key=_prior))


@dataclass(frozen=True)
class CellStats:
    cell: Cell
    n: int
    correct: int
    lower_bound: float

    @property
    def precision(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def passes(self, target: float) -> bool:
        return self.n > 0 and self.lower_bound >= target


@dataclass(frozen=True)
class AcceptanceRule:
    """One endpoint and model's measured cells, behind one model bundle."""

    endpoint: str
    model: str
    bundle_version: str
    confidence_edge: float  # the LLM confidence splitting "high" from "low", as calibrated
    level: float  # the confidence of the one-sided Clopper-Pearson bounds
    asked: int  # tickets sent to the endpoint (answered or not)
    cells: tuple[CellStats, ...]
    created_at: datetime | None = None
    _by_cell: dict[Cell, CellStats] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_cell", {c.cell: c for c in self.cells})

    @property
    def answered(self) -> int:
        return sum(c.n for c in self.cells)

    @property
    def correct(self) -> int:
        return sum(c.correct for c in self.cells)

    @property
    def overall_precision(self) -> float:
        return self.correct / self.answered if self.answered else 0.0

    def stats(self, cell: Cell) -> CellStats | None:
        return self._by_cell.get(cell)

    def accepted_cells(self, target: float) -> list[CellStats]:
        """The cells that route tickets at ``target``: in ``ORDER``, each with enough answers
        must pass, and the first that fails ends the sequence."""
        needed = min_support(target, self.level)
        accepted = []
        for cell in ORDER:
            stats = self._by_cell.get(cell)
            if stats is None or stats.n < needed:
                continue
            if not stats.passes(target):
                break
            accepted.append(stats)
        return accepted

    def accepted_precision(self, target: float) -> float | None:
        """Precision measured over the accepted cells together (None: none accepted)."""
        chosen = self.accepted_cells(target)
        n = sum(c.n for c in chosen)
        return sum(c.correct for c in chosen) / n if n else None

    def to_json(self) -> dict[str, Any]:
        return {"format": RULE_FORMAT, "confidence_edge": self.confidence_edge,
                "level": self.level, "asked": self.asked,
                "cells": [{"rank": c.cell.rank, "neighbours": c.cell.neighbours,
                           "confidence": c.cell.confidence, "n": c.n, "correct": c.correct,
                           "lower_bound": round(c.lower_bound, 6)} for c in self.cells]}

    @classmethod
    def of_stored(cls, row: StoredRule) -> AcceptanceRule:
        body = row.rule
        if body.get("format") != RULE_FORMAT:
            raise ValueError(f"acceptance rule {row.id} has format {body.get('format')!r}")
        cells = tuple(CellStats(Cell(c["rank"], c["neighbours"], c["confidence"]),
                                int(c["n"]), int(c["correct"]), float(c["lower_bound"]))
                      for c in body["cells"])
        return cls(endpoint=row.endpoint, model=row.model, bundle_version=row.bundle_version,
                   confidence_edge=float(body["confidence_edge"]), level=float(body["level"]),
                   asked=int(body["asked"]), cells=cells, created_at=row.created_at)


@dataclass(frozen=True)
class Outcome:
    """One calibration answer: its cell and whether its label was the true one."""

    cell: Cell
    correct: bool


def build_rule(outcomes: Iterable[Outcome], *, endpoint: str, model: str,
               bundle_version: str, confidence_edge: float, level: float,
               asked: int) -> AcceptanceRule:
    """Count every cell that got answers, each with its own bound at confidence ``level`` (no
    pooling of cells, so a weak cell is never carried by a strong neighbour)."""
    counts: dict[Cell, list[int]] = {}
    for o in outcomes:
        tally = counts.setdefault(o.cell, [0, 0])
        tally[0] += 1
        tally[1] += o.correct
    cells = tuple(CellStats(cell, n, k, precision_lower_bound(k, n, level))
                  for cell, (n, k) in sorted(counts.items(), key=lambda kv: _prior(kv[0])))
    return AcceptanceRule(endpoint=endpoint_key(endpoint), model=model,
                          bundle_version=bundle_version, confidence_edge=confidence_edge,
                          level=level, asked=asked, cells=cells)


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str  # why not, for the review's reason ("" when accepted)
    cell: Cell | None = None


def judge(rule: AcceptanceRule | None, label: str, confidence: float, ranked: Sequence[str],
          neighbours: Sequence[Neighbour], *, target: float, bundle_version: str) -> Verdict:
    """May this answer route the ticket? Only inside a cell measured at ``target`` or better,
    by a rule calibrated behind the model that is serving (another model passes other tickets
    on, with other rankings, so its measurements do not carry over)."""
    if rule is None:
        return Verdict(False, "LLM endpoint not calibrated: suggestion only "
                              "(`cca llm calibrate`)")
    if rule.bundle_version != bundle_version:
        return Verdict(False, f"LLM calibrated behind model {rule.bundle_version}, not "
                              f"{bundle_version}: suggestion only (`cca llm calibrate`)")
    cell = cell_of(label, confidence, ranked, neighbours, rule.confidence_edge)
    stats = rule.stats(cell)
    if stats is None:
        return Verdict(False, f"LLM answer in a cell never seen in calibration ({cell.key}): "
                              "suggestion only", cell)
    if any(a.cell == cell for a in rule.accepted_cells(target)):
        return Verdict(True, "", cell)
    measured = (f"LLM answer in a cell measured at {stats.precision:.0%} ({stats.correct}/"
                f"{stats.n}, at least {stats.lower_bound:.0%} at {rule.level:.0%} confidence)")
    if stats.n < min_support(target, rule.level):
        return Verdict(False, f"{measured}: too few answers to show {target:.0%}", cell)
    if not stats.passes(target):
        return Verdict(False, f"{measured} < {target:.0%}", cell)
    return Verdict(False, f"{measured}, but tested after a cell that fell short of "
                          f"{target:.0%}", cell)


def load_rule(db: Database, settings: Settings) -> AcceptanceRule | None:
    """The newest rule stored for the configured endpoint and model (None: uncalibrated,
    also when PostgreSQL cannot be reached: the LLM then only suggests)."""
    if not settings.llm_base_url:
        return None
    try:
        with db.begin() as conn:
            row = latest_rule(conn, endpoint_key(settings.llm_base_url), settings.llm_model)
    except StoreUnavailable as exc:
        log.warning("LLM acceptance rule not loaded, PostgreSQL unreachable (%s): the LLM "
                    "only suggests", type(exc).__name__)
        return None
    if row is None:
        return None
    try:
        return AcceptanceRule.of_stored(row)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("LLM acceptance rule %s unreadable (%s): the LLM only suggests", row.id, exc)
        return None

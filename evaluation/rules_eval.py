"""How each rule does on labelled tickets: hits, correct hits, precision, what it misfires on."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cca.tickets import Ticket
from rules.engine import RuleSet


@dataclass
class RuleStats:
    rule_id: str
    kind: str
    label: str | None
    hits: int = 0
    correct: int = 0
    wrong_labels: Counter = field(default_factory=Counter)

    @property
    def precision(self) -> float | None:
        return self.correct / self.hits if self.hits and self.kind == "route" else None


def evaluate_rules(rules: RuleSet, tickets: list[Ticket], truths: list[str]) -> list[RuleStats]:
    """Every rule that fires is counted, not only the one that wins, so misfires show."""
    stats = {r.spec.id: RuleStats(r.spec.id, r.spec.kind, r.spec.label) for r in rules.rules}
    for ticket, truth in zip(tickets, truths, strict=True):
        for rule_id in rules.apply(ticket).fired:
            s = stats[rule_id]
            s.hits += 1
            if s.kind == "route":
                if s.label == truth:
                    s.correct += 1
                else:
                    s.wrong_labels[truth] += 1
    return list(stats.values())

"""The condition language of a rule: keywords, phrases, regex, priority, age, SLA; all/any/not.

A condition node is a mapping; several keys in one mapping must all hold. Compiled once at
load into plain predicates so a rule costs microseconds per ticket.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cca.tickets import Ticket


@dataclass(frozen=True)
class Context:
    ticket: Ticket
    text: str  # lower-cased subject + body
    now: datetime
    sla_hours: dict[str, float]

    @property
    def age_hours(self) -> float:
        return max(0.0, (self.now - self.ticket.created_at).total_seconds() / 3600)


Predicate = Callable[[Context], bool]


class ConditionError(ValueError):
    """A condition that cannot be compiled; the message names the offending part."""


def _as_list(value: object, key: str) -> list:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConditionError(f"'{key}' needs at least one value")
    return items


def _words(value: object, key: str) -> re.Pattern[str]:
    terms = []
    for term in _as_list(value, key):
        if not isinstance(term, str | int | float) or not str(term).strip():
            raise ConditionError(f"'{key}' takes non-empty strings, got {term!r}")
        terms.append(r"\s+".join(re.escape(w) for w in str(term).lower().split()))
    return re.compile(r"\b(?:" + "|".join(terms) + r")\b")


def _regex(value: object, key: str) -> list[re.Pattern[str]]:
    out = []
    for pattern in _as_list(value, key):
        if not isinstance(pattern, str):
            raise ConditionError(f"'regex' takes strings, got {pattern!r}")
        try:
            out.append(re.compile(pattern, re.IGNORECASE))
        except re.error as exc:
            raise ConditionError(f"invalid regex {pattern!r}: {exc}") from exc
    return out


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConditionError(f"'{key}' takes a non-negative number, got {value!r}")
    return float(value)


def _one(key: str, value: object) -> Predicate:
    if key in ("keyword", "keywords", "phrase"):
        pat = _words(value, key)
        return lambda c: pat.search(c.text) is not None
    if key == "regex":
        pats = _regex(value, key)
        return lambda c: any(p.search(c.text) for p in pats)
    if key in ("all", "any", "not"):
        children = [compile_condition(v) for v in _as_list(value, key)]
        if key == "all":
            return lambda c: all(p(c) for p in children)
        if key == "any":
            return lambda c: any(p(c) for p in children)
        return lambda c: not any(p(c) for p in children)
    if key == "priority_in":
        wanted = {str(p) for p in _as_list(value, key)}
        unknown = wanted - {"low", "normal", "high", "critical"}
        if unknown:
            raise ConditionError(f"unknown priority {sorted(unknown)}")
        return lambda c: c.ticket.priority in wanted
    if key == "age_hours_over":
        hours = _number(value, key)
        return lambda c: c.age_hours > hours
    if key == "sla_breached":
        if not isinstance(value, bool):
            raise ConditionError(f"'sla_breached' takes true or false, got {value!r}")
        return lambda c: (c.age_hours > c.sla_hours.get(c.ticket.priority, float("inf"))) == value
    raise ConditionError(
        f"unknown condition '{key}' (use keyword, phrase, regex, all, any, not, priority_in, "
        "age_hours_over, sla_breached)"
    )


def compile_condition(node: object) -> Predicate:
    if not isinstance(node, dict) or not node:
        raise ConditionError(f"a condition must be a non-empty mapping, got {node!r}")
    parts = [_one(str(k), v) for k, v in node.items()]
    if len(parts) == 1:
        return parts[0]
    return lambda c: all(p(c) for p in parts)

"""Load a YAML rule file, fail loudly on a bad one, and apply it to tickets.

Two kinds of rule: ``route`` rules answer a label with their own confidence (the first stage
of the cascade); ``urgency`` rules raise a ticket's urgency or flag an SLA breach, whichever
stage answers the label.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cca.errors import ConfigError, describe_yaml_error
from cca.tickets import Ticket
from rules.conditions import ConditionError, Context, Predicate, compile_condition

Urgency = Literal["low", "normal", "high", "critical"]
URGENCY_ORDER: dict[str, int] = {"low": 0, "normal": 1, "high": 2, "critical": 3}


class RuleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["route", "urgency"] = "route"
    description: str = ""
    enabled: bool = True
    label: str | None = None
    department: str | None = None
    urgency: Urgency | None = None
    sla_breach: bool = False
    confidence: float = Field(default=0.95, gt=0, le=1)
    when: dict

    @model_validator(mode="after")
    def _kind_fields(self) -> RuleSpec:
        if self.kind == "route" and not self.label:
            raise ValueError("a route rule needs 'label'")
        if self.kind == "urgency" and not (self.urgency or self.sla_breach):
            raise ValueError("an urgency rule needs 'urgency' or 'sla_breach: true'")
        return self


class RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    sla_hours: dict[Urgency, float] = Field(
        default_factory=lambda: {"critical": 1, "high": 4, "normal": 24, "low": 72}
    )
    rules: list[dict] = Field(min_length=1)


@dataclass(frozen=True)
class Rule:
    spec: RuleSpec
    predicate: Predicate


@dataclass
class RuleHit:
    """What the rules said about one ticket."""

    label: str | None = None
    department: str | None = None
    confidence: float = 0.0
    rule_id: str | None = None
    urgency: str = "normal"
    sla_breach: bool = False
    fired: list[str] = field(default_factory=list)


@dataclass
class RuleSet:
    path: Path
    version: str
    sla_hours: dict[str, float]
    rules: list[Rule]

    def apply(self, ticket: Ticket, now: datetime | None = None) -> RuleHit:
        ctx = Context(ticket=ticket, text=ticket.text.lower(), now=now or datetime.now(UTC),
                      sla_hours=self.sla_hours)
        hit = RuleHit()
        for rule in self.rules:
            if not rule.predicate(ctx):
                continue
            spec = rule.spec
            hit.fired.append(spec.id)
            if spec.kind == "route":
                if spec.confidence > hit.confidence:
                    hit.label, hit.department = spec.label, spec.department
                    hit.confidence, hit.rule_id = spec.confidence, spec.id
            else:
                if spec.urgency and URGENCY_ORDER[spec.urgency] > URGENCY_ORDER[hit.urgency]:
                    hit.urgency = spec.urgency
                hit.sla_breach = hit.sla_breach or spec.sla_breach
        return hit


def _where(path: Path, index: int, raw: object) -> str:
    rid = raw.get("id") if isinstance(raw, dict) else None
    return f"{path}: rule {rid!r}" if rid else f"{path}: rule #{index + 1}"


def load_rules(path: Path) -> RuleSet:
    """Parse and compile every rule; any problem names the file, the rule and the reason."""
    try:
        raw_text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read rule file: {exc}") from exc
    try:
        data = yaml.safe_load(raw_text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {describe_yaml_error(exc)}") from exc
    try:
        rule_file = RuleFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(
            f"{path}: {'.'.join(map(str, err['loc'])) or 'file'}: {err['msg']}"
        ) from exc
    rules, seen = [], set()
    for i, raw in enumerate(rule_file.rules):
        where = _where(path, i, raw)
        try:
            spec = RuleSpec.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            field_name = ".".join(map(str, err["loc"])) or "rule"
            raise ConfigError(f"{where}: {field_name}: {err['msg']}") from exc
        if spec.id in seen:
            raise ConfigError(f"{where}: duplicate rule id")
        seen.add(spec.id)
        try:
            predicate = compile_condition(spec.when)
        except ConditionError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        if spec.enabled:
            rules.append(Rule(spec=spec, predicate=predicate))
    version = hashlib.sha256(raw_text.encode()).hexdigest()[:12]
    return RuleSet(path=path, version=version, sla_hours=dict(rule_file.sla_hours), rules=rules)

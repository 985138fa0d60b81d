"""Stored LLM acceptance rules: per endpoint and model, which answers may route a ticket.

``cca llm calibrate`` appends a row; the newest row per (endpoint, model) is the one the
cascade loads. Older rows stay as the history of what the endpoint was measured at. The rule
body is JSON that ``cascade.llm_acceptance`` writes and reads: the kernel keeps it opaque.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

_INSERT = sa.text(
    "INSERT INTO llm_acceptance_rules (endpoint, model, bundle_version, sample_size, "
    "answered, overall_precision, rule) "
    "VALUES (:endpoint, :model, :bundle_version, :sample_size, :answered, :precision, "
    "CAST(:rule AS jsonb)) RETURNING id"
)
_COLUMNS = ("id, endpoint, model, created_at, bundle_version, sample_size, answered, "
            "overall_precision, rule")
_LATEST = sa.text(
    f"SELECT {_COLUMNS} FROM llm_acceptance_rules WHERE endpoint = :endpoint "
    "AND model = :model ORDER BY created_at DESC, id DESC LIMIT 1"
)
_LATEST_EACH = sa.text(
    f"SELECT DISTINCT ON (endpoint, model) {_COLUMNS} FROM llm_acceptance_rules "
    "ORDER BY endpoint, model, created_at DESC, id DESC"
)


@dataclass(frozen=True)
class StoredRule:
    id: int
    endpoint: str
    model: str
    created_at: datetime
    bundle_version: str  # the champion whose cascade passed the calibration tickets on
    sample_size: int  # tickets sent to the endpoint
    answered: int  # of which it answered with a candidate label
    overall_precision: float  # right answers / answered, every cell together
    rule: dict[str, Any]


def save_rule(conn: Connection, *, endpoint: str, model: str, bundle_version: str,
              sample_size: int, answered: int, overall_precision: float,
              rule: dict[str, Any]) -> int:
    """Append a rule; it is the endpoint and model's rule from now on. Returns its id."""
    return int(conn.execute(_INSERT, {
        "endpoint": endpoint, "model": model, "bundle_version": bundle_version,
        "sample_size": sample_size, "answered": answered, "precision": overall_precision,
        "rule": json.dumps(rule)}).scalar_one())


def latest_rule(conn: Connection, endpoint: str, model: str) -> StoredRule | None:
    row = conn.execute(_LATEST, {"endpoint": endpoint, "model": model}).mappings().first()
    return StoredRule(**row) if row else None


def latest_rules(conn: Connection) -> list[StoredRule]:
    """The rule in force for every endpoint and model ever calibrated."""
    return [StoredRule(**row) for row in conn.execute(_LATEST_EACH).mappings()]

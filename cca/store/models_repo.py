"""What training and the model registry keep in PostgreSQL.

``model_events`` is the registry's own record: every registration, promotion, gate refusal
and rollback, with who and why. It is append-only (a trigger refuses UPDATE, DELETE and
TRUNCATE), so the history of what served does not depend on MLflow being up. Training also
reads the departments the validated labels were stored with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

_INSERT_EVENT = sa.text(
    "INSERT INTO model_events (action, model, version, actor, reason, details) "
    "VALUES (:a, :m, :v, :actor, :r, CAST(:d AS jsonb))"
)

_EVENTS = sa.text(
    "SELECT id, at, action, version, actor, reason, details FROM model_events "
    "WHERE model = :m AND (CAST(:v AS text) IS NULL OR version = :v) ORDER BY id"
)

_LABEL_DEPARTMENTS = sa.text(
    "SELECT DISTINCT label, department FROM ticket_labels WHERE validated"
)


@dataclass(frozen=True)
class NewModelEvent:
    """One move of a registered model, as it is written."""

    action: str  # register, promote, gate-refused, rollback
    model: str
    version: str | None
    actor: str
    reason: str
    # Free-form JSON for the record (gate reasons, from/to versions, bundle version...).
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelEvent:
    """One row of ``model_events`` of a model, as read back."""

    id: int
    at: datetime
    action: str
    version: str | None
    actor: str
    reason: str
    details: dict[str, Any]


def append_event(conn: Connection, event: NewModelEvent) -> None:
    """Append ``event``; details that are not JSON types are stored as their ``str``."""
    conn.execute(_INSERT_EVENT, {
        "a": event.action, "m": event.model, "v": event.version, "actor": event.actor,
        "r": event.reason, "d": json.dumps(event.details, default=str)})


def model_events(conn: Connection, model: str, version: str | None = None) -> list[ModelEvent]:
    """The model's events (only those of ``version`` if given), oldest first."""
    rows = conn.execute(_EVENTS, {"m": model, "v": version}).mappings().all()
    return [ModelEvent(**row) for row in rows]


def label_departments(conn: Connection) -> dict[str, str]:
    """Label -> department as stored with the validated labels (one of them if a label was
    stored with several)."""
    return dict(conn.execute(_LABEL_DEPARTMENTS).all())

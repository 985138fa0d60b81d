"""Records that could not be accepted, kept with the reason so nothing is silently dropped.

The payload is the record as received (it may hold PII, so retention purges old payloads
together with raw ticket text).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class QuarantineItem:
    stage: str
    source: str
    location: str
    reason: str
    payload: dict[str, Any]


def _clean(value: Any) -> Any:
    """Bytes that were not UTF-8 arrive as lone surrogates, which jsonb refuses."""
    if isinstance(value, str):
        # jsonb refuses NUL too.
        return (value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                .replace("\x00", "\ufffd"))
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)


def quarantine(conn: Connection, items: list[QuarantineItem]) -> int:
    if not items:
        return 0
    conn.execute(
        sa.text(
            "INSERT INTO quarantine (stage, source, location, reason, payload) "
            "VALUES (:stage, :source, :location, :reason, CAST(:payload AS jsonb))"
        ),
        [
            {"stage": i.stage, "source": i.source, "location": i.location,
             "reason": _clean(i.reason), "payload": json.dumps(_clean(i.payload))}
            for i in items
        ],
    )
    return len(items)


def open_counts(conn: Connection) -> dict[str, int]:
    """Unreleased quarantine rows per stage, for reports."""
    rows = conn.execute(
        sa.text("SELECT stage, count(*) FROM quarantine WHERE released_at IS NULL GROUP BY stage")
    ).all()
    return {stage: int(n) for stage, n in rows}


@dataclass(frozen=True)
class QuarantinedRow:
    """An open quarantine row as ``cca quarantine`` lists it (never its payload)."""

    id: int
    quarantined_at: datetime
    stage: str
    source: str
    location: str
    reason: str


def recent(conn: Connection, limit: int = 20, stage: str | None = None) -> list[QuarantinedRow]:
    """The newest unreleased rows, without payloads (they may hold raw text)."""
    rows = conn.execute(
        sa.text("SELECT id, quarantined_at, stage, source, location, reason FROM quarantine "
                "WHERE released_at IS NULL AND (CAST(:stage AS text) IS NULL OR stage = :stage) "
                "ORDER BY id DESC LIMIT :limit"),
        {"stage": stage, "limit": limit},
    ).all()
    return [QuarantinedRow(*r) for r in rows]


def release(conn: Connection, stage: str, locations: list[str]) -> None:
    """Resolve the open rows of ``stage`` at these locations (the record has since passed)."""
    conn.execute(sa.text("UPDATE quarantine SET released_at = now() "
                         "WHERE stage = :stage AND released_at IS NULL "
                         "AND location = ANY(:locs)"),
                 {"stage": stage, "locs": locations})


def purge_payloads(conn: Connection, quarantined_before: datetime) -> int:
    """Empty the payloads (raw records, which may hold PII) of rows older than the cutoff;
    the reason and location stay. How many were emptied."""
    return conn.execute(
        sa.text("UPDATE quarantine SET payload = '{}'::jsonb "
                "WHERE quarantined_at < :cut AND payload <> '{}'::jsonb"),
        {"cut": quarantined_before},
    ).rowcount

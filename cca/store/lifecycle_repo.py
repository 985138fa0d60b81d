"""The data lifecycle's work on tickets: what each step has left to do, and how it marks done.

A ticket moves through sanitize (``sanitized_for``), the near-duplicate check
(``dedup_for``, in ``dedup_repo``) and validation (``checked_for``); each marker holds the
hash of the text it was done for, so a changed ticket is picked up again. Only then is it
indexed and trained on. Retention purges raw text that has a redacted copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cca.store.tickets_repo import COUNTS_AS_ORIGINAL


@dataclass(frozen=True)
class RawText:
    """A ticket's raw text waiting for redaction."""

    id: str
    subject: str
    body: str
    content_hash: str


@dataclass(frozen=True)
class RedactedText:
    id: str
    subject: str
    body: str
    clean_hash: str
    sanitized_for: str  # the content hash of the raw text this redacts
    pii_found: dict[str, int]  # PII type -> how many were redacted


_TO_SANITIZE = sa.text(
    """
    SELECT id, subject, body, content_hash FROM tickets
    WHERE sanitized_for IS DISTINCT FROM content_hash AND raw_purged_at IS NULL
      AND (CAST(:ids AS text[]) IS NULL OR id = ANY(:ids))
    ORDER BY created_at, id
    """
)


def to_sanitize(conn: Connection, ids: list[str] | None = None) -> list[RawText]:
    """Tickets whose raw text is new or changed since redaction (of ``ids`` only, if given),
    oldest first."""
    return [RawText(**row) for row in conn.execute(_TO_SANITIZE, {"ids": ids}).mappings()]


def save_redacted(conn: Connection, redacted: list[RedactedText]) -> None:
    conn.execute(
        sa.text("UPDATE tickets SET clean_subject = :s, clean_body = :b, clean_hash = :h,"
                " sanitized_for = :for, pii_found = CAST(:pii AS jsonb) WHERE id = :id"),
        [{"id": r.id, "s": r.subject, "b": r.body, "h": r.clean_hash, "for": r.sanitized_for,
          "pii": json.dumps(r.pii_found)} for r in redacted],
    )


@dataclass(frozen=True)
class ToValidate:
    """A ticket's raw and redacted text and its validated label, for both suites."""

    id: str
    source: str
    subject: str
    body: str
    created_at: datetime
    clean_subject: str
    clean_body: str
    clean_hash: str
    label: str | None


# A refused ticket comes back once its text, its record (e.g. a corrected date) or its label
# changed after it was refused.
_TO_VALIDATE = sa.text(
    """
    SELECT t.id, t.source, t.subject, t.body, t.created_at, t.clean_subject, t.clean_body,
           t.clean_hash, l.label
    FROM tickets t LEFT JOIN ticket_labels l ON l.ticket_id = t.id AND l.validated
    WHERE t.sanitized_for = t.content_hash AND t.dedup_for = t.clean_hash
      AND t.checked_for IS DISTINCT FROM t.clean_hash
      AND (t.checked_for IS DISTINCT FROM 'refused:' || t.clean_hash
           OR greatest(t.updated_at, l.labelled_at) > (
               SELECT max(q.quarantined_at) FROM quarantine q
               WHERE q.stage = 'validate' AND q.location = 'ticket:' || t.id))
    ORDER BY t.created_at, t.id
    """
)


def to_validate(conn: Connection) -> list[ToValidate]:
    """Redacted, near-duplicate-checked tickets not yet validated, oldest first."""
    return [ToValidate(**row) for row in conn.execute(_TO_VALIDATE).mappings()]


def mark_checked(conn: Connection, checked_for: list[tuple[str, str]]) -> None:
    """(ticket id, marker) pairs: the clean hash for a ticket that passed validation,
    ``refused:<clean hash>`` for one that was quarantined."""
    conn.execute(sa.text("UPDATE tickets SET checked_for = :h WHERE id = :id"),
                 [{"id": tid, "h": marker} for tid, marker in checked_for])


@dataclass(frozen=True)
class ToIndex:
    """A prepared ticket's redacted text (keyed by its hash) and its label."""

    id: str
    subject: str  # redacted
    body: str  # redacted
    content_hash: str  # of the redacted text
    source: str
    created_at: datetime
    label: str
    department: str
    validated: bool


# Only redacted, validated tickets that are not a counted-out near-duplicate reach the index,
# keyed by the hash of the redacted text.
_TO_INDEX = sa.text(
    f"""
    SELECT t.id, t.clean_subject AS subject, t.clean_body AS body,
           t.clean_hash AS content_hash, t.source, t.created_at,
           l.label, l.department, l.validated
    FROM tickets t JOIN ticket_labels l ON l.ticket_id = t.id
    WHERE t.sanitized_for = t.content_hash AND {COUNTS_AS_ORIGINAL}
      AND t.checked_for = t.clean_hash
      AND (CAST(:since AS timestamptz) IS NULL OR t.created_at >= :since)
    """
)


def to_index(conn: Connection, since: datetime | None = None) -> list[ToIndex]:
    """Labelled tickets ready for the index (created from ``since`` on, if given)."""
    return [ToIndex(**row) for row in conn.execute(_TO_INDEX, {"since": since}).mappings()]


def purge_raw_text(conn: Connection, created_before: datetime, now: datetime) -> int:
    """Blank the raw text, customer reference and caller's metadata (free-form: a reporter's
    e-mail or name lands there) of tickets created before the cutoff that have a redacted
    copy; how many were purged."""
    return conn.execute(
        sa.text("UPDATE tickets SET subject = '', body = '', customer_ref = NULL, "
                "metadata = '{}'::jsonb, "
                "raw_purged_at = :now WHERE created_at < :cut AND raw_purged_at IS NULL "
                "AND sanitized_for = content_hash"),
        {"now": now, "cut": created_before},
    ).rowcount

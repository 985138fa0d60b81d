"""Tickets and their validated labels: idempotent by ticket id, written in one transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cca.tickets import Ticket

# A near-duplicate stays out of training and the index when its original already carries
# the same validated label and has passed validation (a redundant copy). If the original has
# no label, another one (a person said these differ), or is itself held back, the
# duplicate's label is information and is kept.
COUNTS_AS_ORIGINAL = """(t.duplicate_of IS NULL OR NOT EXISTS (
    SELECT 1 FROM ticket_labels o
    JOIN ticket_labels d ON d.ticket_id = t.id
    JOIN tickets ot ON ot.id = o.ticket_id AND ot.checked_for = ot.clean_hash
    WHERE o.ticket_id = t.duplicate_of AND o.validated AND d.validated
      AND o.label = d.label))"""


@dataclass
class UpsertCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


_UPSERT_TICKET = sa.text(
    """
    INSERT INTO tickets (id, source, subject, body, customer_ref, created_at, priority,
                         metadata, content_hash)
    VALUES (:id, :source, :subject, :body, :customer_ref, :created_at, :priority,
            CAST(:metadata AS jsonb), :content_hash)
    ON CONFLICT (id) DO UPDATE SET
        source = EXCLUDED.source, subject = EXCLUDED.subject, body = EXCLUDED.body,
        customer_ref = EXCLUDED.customer_ref,
        created_at = CASE WHEN :created_given THEN EXCLUDED.created_at
                          ELSE tickets.created_at END,
        priority = EXCLUDED.priority, metadata = EXCLUDED.metadata,
        content_hash = EXCLUDED.content_hash, updated_at = now(), raw_purged_at = NULL
    """
)

_UPSERT_LABEL = sa.text(
    """
    INSERT INTO ticket_labels (ticket_id, label, department, validated, origin)
    VALUES (:ticket_id, :label, :department, :validated, :origin)
    ON CONFLICT (ticket_id) DO UPDATE SET
        label = EXCLUDED.label, department = EXCLUDED.department,
        validated = EXCLUDED.validated, origin = EXCLUDED.origin, labelled_at = now()
    WHERE (ticket_labels.label, ticket_labels.department, ticket_labels.validated)
          IS DISTINCT FROM (EXCLUDED.label, EXCLUDED.department, EXCLUDED.validated)
    """
)


def upsert_tickets(
    conn: Connection,
    tickets: list[Ticket],
    labels: dict[str, tuple[str, str]] | None = None,
    origin: str = "import",
) -> UpsertCounts:
    """Insert new tickets, update changed ones, leave identical ones alone.

    ``labels`` maps ticket id to (label, department) for validated labels.
    """
    counts = UpsertCounts()
    if not tickets:
        return counts
    existing = _stored_records(conn, [t.id for t in tickets])
    rows = [row for t in tickets if (row := _changed_row(t, existing, counts)) is not None]
    if rows:
        conn.execute(_UPSERT_TICKET, rows)
    if labels:
        set_labels(conn, labels, origin=origin)
    return counts


# What decides whether a stored ticket changed: content hash, customer, date, priority,
# metadata. The source is provenance (often the file's name), not content: not compared.
_Record = tuple[str, str | None, datetime, str, dict]


def known_ids(conn: Connection, ids: list[str]) -> set[str]:
    """Which of ``ids`` the store already holds."""
    rows = conn.execute(sa.text("SELECT id FROM tickets WHERE id = ANY(:ids)"), {"ids": ids})
    return {r[0] for r in rows}


def _stored_records(conn: Connection, ids: list[str]) -> dict[str, _Record]:
    # The whole record is compared, not only the text: a corrected date or priority must be
    # stored (and lets a ticket refused by validation be checked again).
    return {
        row[0]: tuple(row[1:])
        for row in conn.execute(
            sa.text("SELECT id, content_hash, customer_ref, created_at, priority, metadata "
                    "FROM tickets WHERE id = ANY(:ids)"),
            {"ids": ids},
        ).all()
    }


def _changed_row(t: Ticket, existing: dict[str, _Record], counts: UpsertCounts
                 ) -> dict | None:
    """The upsert's parameters for a new or changed ticket (counted), None if unchanged."""
    digest = t.content_hash()
    # A record without its own created_at (defaulted to now) keeps the stored date.
    given = "created_at" in t.model_fields_set
    record = (digest, t.customer_ref, t.created_at, t.priority, t.metadata)
    if t.id in existing and not given:
        record = (*record[:2], existing[t.id][2], *record[3:])
    if t.id not in existing:
        counts.inserted += 1
    elif existing[t.id] != record:
        counts.updated += 1
    else:
        counts.unchanged += 1
        return None
    return {
        "id": t.id,
        "source": t.source,
        "subject": t.subject,
        "body": t.body,
        "customer_ref": t.customer_ref,
        "created_at": t.created_at,
        "created_given": given,
        "priority": t.priority,
        "metadata": json.dumps(t.metadata),
        "content_hash": digest,
    }


def set_labels(
    conn: Connection, labels: dict[str, tuple[str, str]], origin: str, validated: bool = True
) -> None:
    conn.execute(
        _UPSERT_LABEL,
        [
            {"ticket_id": tid, "label": lab, "department": dep, "validated": validated,
             "origin": origin}
            for tid, (lab, dep) in labels.items()
        ],
    )


def labelled_tickets(
    conn: Connection, source: str | None = None, since: datetime | None = None
) -> list[tuple[Ticket, str]]:
    """The training set, oldest first: validated labels on redacted, non-duplicate tickets.

    Tickets carry their redacted text (the raw text never reaches a model); ``since`` keeps
    labels given (or tickets created) from that moment on.
    """
    query = f"""
        SELECT t.id, t.source, t.clean_subject AS subject, t.clean_body AS body,
               t.customer_ref, t.created_at, t.priority, t.metadata, l.label
        FROM tickets t JOIN ticket_labels l ON l.ticket_id = t.id
        WHERE l.validated AND t.sanitized_for = t.content_hash
          AND t.checked_for = t.clean_hash AND {COUNTS_AS_ORIGINAL}
          AND (CAST(:source AS text) IS NULL OR t.source = :source)
          AND (CAST(:since AS timestamptz) IS NULL
               OR greatest(t.created_at, l.labelled_at) >= :since)
        ORDER BY t.created_at, t.id
    """
    out = []
    for row in conn.execute(sa.text(query), {"source": source, "since": since}).mappings():
        ticket = Ticket(
            id=row["id"], source=row["source"], subject=row["subject"], body=row["body"],
            customer_ref=row["customer_ref"], created_at=row["created_at"],
            priority=row["priority"], metadata=row["metadata"],
        )
        out.append((ticket, row["label"]))
    return out


def get_ticket(conn: Connection, ticket_id: str) -> Ticket | None:
    row = conn.execute(
        sa.text(
            "SELECT id, source, subject, body, customer_ref, created_at, priority, metadata "
            "FROM tickets WHERE id = :id"
        ),
        {"id": ticket_id},
    ).mappings().first()
    return Ticket(**row) if row else None


def get_prepared_ticket(conn: Connection, ticket_id: str) -> Ticket | None:
    """The ticket with its redacted text if it is ready for the index (redacted, validated,
    not a counted-out near-duplicate), else None."""
    row = conn.execute(
        sa.text(
            "SELECT id, source, clean_subject AS subject, clean_body AS body, customer_ref, "
            "created_at, priority, metadata FROM tickets t "
            f"WHERE id = :id AND sanitized_for = content_hash AND checked_for = clean_hash "
            f"AND {COUNTS_AS_ORIGINAL}"
        ),
        {"id": ticket_id},
    ).mappings().first()
    return Ticket(**row) if row else None


def redacted_texts(conn: Connection, ids: list[str]) -> dict[str, str]:
    """The redacted text of each ticket that has one for its current content (what may be
    shown to an LLM); tickets not yet sanitized, or changed since, are left out."""
    if not ids:
        return {}
    rows = conn.execute(
        sa.text("SELECT id, clean_subject, clean_body FROM tickets WHERE id = ANY(:ids) "
                "AND clean_body IS NOT NULL AND sanitized_for = content_hash"),
        {"ids": list(dict.fromkeys(ids))})
    return {tid: "\n".join(p for p in (subject, body) if p) for tid, subject, body in rows}

"""MinHash signatures and near-duplicate links: the durable half of the near-duplicate check.

The signatures are the record the Redis LSH index is rebuilt from (``pipelines.dedup``);
``tickets.duplicate_of`` links a duplicate to its original and ``tickets.dedup_for`` says
which redacted text was checked.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class PendingTicket:
    """A redacted ticket not yet checked (or changed, or signed with other parameters)."""

    id: str
    clean_subject: str | None
    clean_body: str | None
    clean_hash: str
    label: str | None  # its validated label, if any
    had_signature: bool  # signed before: its text changed since


@dataclass(frozen=True)
class KnownSignature:
    ticket_id: str
    signature: bytes
    label: str | None  # its validated label, if any


@dataclass(frozen=True)
class DedupLink:
    """The outcome for one checked ticket: its signature, and its original if a duplicate."""

    ticket_id: str
    duplicate_of: str | None
    clean_hash: str
    signature: bytes
    params: str


def namespace(conn: Connection) -> str:
    """A random id stored in the database, so two databases never share Redis keys."""
    conn.execute(sa.text("INSERT INTO ingest_cursors (connector, cursor) "
                         "VALUES ('dedup:namespace', :v) ON CONFLICT DO NOTHING"),
                 {"v": uuid.uuid4().hex[:12]})
    return conn.execute(sa.text("SELECT cursor FROM ingest_cursors "
                                "WHERE connector = 'dedup:namespace'")).scalar_one()


def original_signatures(conn: Connection, params: str) -> list[tuple[str, bytes]]:
    """(ticket id, signature) of every ticket that is no duplicate, signed with ``params``."""
    rows = conn.execute(
        sa.text("SELECT m.ticket_id, m.signature FROM ticket_minhash m "
                "JOIN tickets t ON t.id = m.ticket_id "
                "WHERE m.params = :p AND t.duplicate_of IS NULL"),
        {"p": params},
    ).all()
    return [(tid, bytes(raw)) for tid, raw in rows]


def count_original_signatures(conn: Connection, params: str) -> int:
    """How many entries the Redis index should hold (``original_signatures``' length)."""
    stored = conn.execute(
        sa.text("SELECT count(*) FROM ticket_minhash m JOIN tickets t ON t.id = m.ticket_id "
                "WHERE m.params = :p AND t.duplicate_of IS NULL"),
        {"p": params},
    ).scalar()
    return int(stored or 0)


_PENDING = sa.text(
    """
    SELECT t.id, t.clean_subject, t.clean_body, t.clean_hash, l.label,
           m.ticket_id IS NOT NULL AS had_signature
    FROM tickets t
    LEFT JOIN ticket_labels l ON l.ticket_id = t.id AND l.validated
    LEFT JOIN ticket_minhash m ON m.ticket_id = t.id
    WHERE t.sanitized_for = t.content_hash
      AND (t.dedup_for IS DISTINCT FROM t.clean_hash
           OR m.params IS DISTINCT FROM :params)  -- new MinHash parameters: sign again
    ORDER BY t.created_at, t.id
    """
)


def pending(conn: Connection, params: str) -> list[PendingTicket]:
    """Redacted tickets to check, oldest first."""
    return [PendingTicket(**row) for row in conn.execute(_PENDING, {"params": params}).mappings()]


def known_signatures(conn: Connection, ticket_ids: list[str]) -> list[KnownSignature]:
    """The stored signatures (and validated labels) of these tickets, those that have one."""
    rows = conn.execute(
        sa.text("SELECT m.ticket_id, m.signature, l.label FROM ticket_minhash m "
                "LEFT JOIN ticket_labels l ON l.ticket_id = m.ticket_id AND l.validated "
                "WHERE m.ticket_id = ANY(:ids)"),
        {"ids": ticket_ids},
    )
    return [KnownSignature(tid, bytes(raw), label) for tid, raw, label in rows]


def save_links(conn: Connection, links: list[DedupLink]) -> None:
    """Store each ticket's signature and mark it checked, linked to its original or not."""
    params = [{"id": k.ticket_id, "dup": k.duplicate_of, "h": k.clean_hash,
               "sig": k.signature, "p": k.params} for k in links]
    conn.execute(
        sa.text("INSERT INTO ticket_minhash (ticket_id, params, clean_hash, signature) "
                "VALUES (:id, :p, :h, :sig) ON CONFLICT (ticket_id) DO UPDATE SET "
                "params = EXCLUDED.params, clean_hash = EXCLUDED.clean_hash, "
                "signature = EXCLUDED.signature, created_at = now()"),
        params,
    )
    conn.execute(
        sa.text("UPDATE tickets SET duplicate_of = :dup, dedup_for = :h WHERE id = :id"),
        params,
    )


def recheck_duplicates_of(conn: Connection, changed: list[str], checked: list[str]) -> None:
    """Tickets linked to a ``changed`` one (outside those just ``checked``) are checked again:
    they may no longer be duplicates of it."""
    conn.execute(sa.text("UPDATE tickets SET dedup_for = NULL "
                         "WHERE duplicate_of = ANY(:ids) AND NOT id = ANY(:chunk)"),
                 {"ids": changed, "chunk": checked})

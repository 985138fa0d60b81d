"""The ticketing loop's SQL: the intake queue, write-back records and agents' corrections.

Queue semantics (migration 0006): an event is stored once per (source, event_key); workers
claim due rows with ``FOR UPDATE SKIP LOCKED`` under a lease, so two workers never hold one
row and a killed worker's row comes back when its lease ends. Only the worker holding the
lease may finish, reschedule or bury a row (``worker`` is the fencing token).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from cca.store.database import Database

_ENQUEUE = sa.text(
    "INSERT INTO intake_events (source, event_key, kind, event_type, ticket_id, ticket_ref, "
    "customer_ref, payload) VALUES (:source, :event_key, :kind, :event_type, :ticket_id, "
    ":ticket_ref, :customer_ref, CAST(:payload AS jsonb)) "
    "ON CONFLICT (source, event_key) DO NOTHING RETURNING id"
)
_WAITING = sa.text("SELECT count(*) FROM intake_events WHERE status IN ('pending', 'processing')")
_BURY_CRASHED = sa.text(
    "UPDATE intake_events SET status = 'dead', outcome = 'dead-letter', lease_until = NULL, "
    "done_at = now(), last_error = 'a worker stopped (crashed or was killed) while handling "
    "it ' || attempts || ' times' WHERE status = 'processing' AND lease_until < now() "
    "AND attempts >= :max_attempts"
)
_CLAIM = sa.text(
    """
    UPDATE intake_events SET status = 'processing', attempts = attempts + 1, worker = :worker,
           lease_until = now() + make_interval(secs => :lease)
    WHERE id IN (
        SELECT id FROM intake_events
        WHERE (status = 'pending' AND next_attempt_at <= now())
           OR (status = 'processing' AND lease_until < now())
        ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED)
    RETURNING id, payload, attempts, received_at
    """
)
_FINISH = sa.text(
    "UPDATE intake_events SET status = 'done', outcome = :outcome, done_at = now(), "
    "lease_until = NULL, last_error = NULL WHERE id = :id AND worker = :worker "
    "AND status = 'processing'"
)
_RESCHEDULE = sa.text(
    "UPDATE intake_events SET status = 'pending', lease_until = NULL, last_error = :error, "
    "next_attempt_at = now() + make_interval(secs => :delay) "
    "WHERE id = :id AND worker = :worker AND status = 'processing'"
)
_BURY = sa.text(
    "UPDATE intake_events SET status = 'dead', outcome = 'dead-letter', lease_until = NULL, "
    "last_error = :error, done_at = now() WHERE id = :id AND worker = :worker "
    "AND status = 'processing'"
)
_EXTEND = sa.text(
    "UPDATE intake_events SET lease_until = now() + make_interval(secs => :lease) "
    "WHERE status = 'processing' AND (id, worker) IN "
    "(SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:workers AS text[])))"
)
_RELEASE = sa.text(
    "UPDATE intake_events SET status = 'pending', lease_until = NULL, "
    "attempts = greatest(attempts - 1, 0) "
    "WHERE id = ANY(:ids) AND worker = :worker AND status = 'processing'"
)
_DEAD = sa.text(
    "SELECT id, source, ticket_id, ticket_ref, event_type, attempts, last_error, received_at, "
    "done_at FROM intake_events WHERE status = 'dead' ORDER BY id LIMIT :n"
)
_REPLAY = sa.text(
    "UPDATE intake_events SET status = 'pending', attempts = 0, next_attempt_at = now(), "
    "worker = NULL, done_at = NULL, outcome = NULL WHERE id = :id AND status = 'dead' "
    "RETURNING id"
)
_STATS = sa.text(
    """
    SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'processing') AS processing,
           count(*) FILTER (WHERE status = 'dead') AS dead,
           COALESCE(EXTRACT(EPOCH FROM now() - min(received_at)
                    FILTER (WHERE status IN ('pending', 'processing'))), 0) AS oldest_s
    FROM intake_events
    """
)
_WRITEBACK_COLS = ("id, event_id, source, ticket_id, ticket_ref, marker, stage, label, "
                   "department, confidence, model_version, review, urgency, group_value, "
                   "priority_value, tags, note, status")
_WRITEBACK_FOR = sa.text(f"SELECT {_WRITEBACK_COLS} FROM writebacks "
                         "WHERE source = :source AND ticket_ref = :ref")
_START_WRITEBACK = sa.text(
    "INSERT INTO writebacks (event_id, source, ticket_id, ticket_ref, marker, stage, label, "
    "department, confidence, model_version, review, urgency, group_value, priority_value, "
    "tags, note) VALUES (:event_id, :source, :ticket_id, :ticket_ref, :marker, :stage, "
    ":label, :department, :confidence, :model_version, :review, :urgency, :group_value, "
    ":priority_value, :tags, :note) ON CONFLICT (source, ticket_ref) DO NOTHING"
)
_TRY_LOCK = sa.text("SELECT pg_try_advisory_lock(hashtextextended(:k, 0))")
_UNLOCK = sa.text("SELECT pg_advisory_unlock(hashtextextended(:k, 0))")
_REROUTE_UNSENT = sa.text(
    "UPDATE writebacks SET group_value = :group_value, priority_value = :priority_value, "
    "tags = :tags WHERE id = :id AND status = 'sending'"
)
_SENT = sa.text("UPDATE writebacks SET status = 'sent', sent_at = now() WHERE id = :id")
_CORRECTION = sa.text(
    "INSERT INTO corrections (event_id, writeback_id, source, ticket_id, field, written, "
    "corrected, actor, stage, label, department, corrected_label, corrected_department) "
    "VALUES (:event_id, :writeback_id, :source, :ticket_id, :field, :written, :corrected, "
    ":actor, :stage, :label, :department, :corrected_label, :corrected_department) "
    "ON CONFLICT (event_id, field) DO NOTHING RETURNING id"
)
_PURGE_TEXT = sa.text(
    "UPDATE intake_events SET payload = payload || '{\"subject\": \"\", \"body\": \"\", "
    "\"customer_ref\": null}'::jsonb, customer_ref = NULL, last_error = NULL "
    "WHERE received_at < :cut AND status IN ('done', 'dead') "
    "AND (payload->>'subject' <> '' OR payload->>'body' <> '' OR customer_ref IS NOT NULL)"
)
_ERASE = sa.text(
    "DELETE FROM intake_events WHERE customer_ref = ANY(:refs) OR ticket_id = ANY(:ids)"
)
_OUTCOMES = sa.text(
    "SELECT source, COALESCE(outcome, status) AS outcome, count(*) AS n FROM intake_events "
    "WHERE received_at > now() - make_interval(secs => :secs) "
    "GROUP BY source, COALESCE(outcome, status) ORDER BY source, 2"
)
_REROUTES = sa.text(
    """
    SELECT w.source, w.stage, count(*) AS routed,
           count(*) FILTER (WHERE EXISTS (
               SELECT 1 FROM corrections c WHERE c.writeback_id = w.id AND c.field = 'group'
           )) AS rerouted
    FROM writebacks w WHERE w.status = 'sent' AND NOT w.review
    GROUP BY w.source, w.stage ORDER BY w.source, w.stage
    """
)


@dataclass(frozen=True)
class Claimed:
    id: int
    payload: dict[str, Any]
    attempts: int
    received_at: datetime


@dataclass(frozen=True)
class DeadLetter:
    id: int
    source: str
    ticket_id: str
    ticket_ref: str
    event_type: str
    attempts: int
    reason: str
    received_at: datetime
    died_at: datetime | None


@dataclass(frozen=True)
class QueueStats:
    pending: int
    processing: int
    dead: int
    oldest_age_s: float


@dataclass(frozen=True)
class WritebackRow:
    """What the product wrote (or is writing) to one ticket."""

    id: int
    event_id: int
    source: str
    ticket_id: str
    ticket_ref: str
    marker: str
    stage: str
    label: str | None
    department: str | None
    confidence: float
    model_version: str
    review: bool
    urgency: str
    group_value: str | None
    priority_value: str | None
    tags: list[str]
    note: str
    status: str


@dataclass(frozen=True)
class Reroutes:
    source: str
    stage: str
    routed: int
    rerouted: int

    @property
    def rate(self) -> float:
        return self.rerouted / self.routed if self.routed else 0.0


def enqueue(conn: Connection, event: dict[str, Any]) -> int | None:
    """Store one event (``WebhookEvent.to_dict()``); None when it was stored before."""
    row = conn.execute(_ENQUEUE, {
        "source": event["source"], "event_key": event["event_key"], "kind": event["kind"],
        "event_type": event["event_type"], "ticket_id": event["ticket_id"],
        "ticket_ref": event["ticket_ref"], "customer_ref": event.get("customer_ref"),
        "payload": json.dumps(event)}).first()
    return int(row[0]) if row else None


def waiting(conn: Connection) -> int:
    """Events accepted and not yet done (the back-pressure measure)."""
    return int(conn.execute(_WAITING).scalar_one())


def claim(conn: Connection, worker: str, n: int, lease_s: float,
          max_attempts: int = 1_000_000) -> list[Claimed]:
    """Up to ``n`` due events for ``worker``. An event whose lease ran out ``max_attempts``
    times (it kills whatever handles it) goes to the dead letters instead of looping."""
    conn.execute(_BURY_CRASHED, {"max_attempts": max_attempts})
    rows = conn.execute(_CLAIM, {"worker": worker, "n": n, "lease": lease_s}).all()
    return sorted((Claimed(r.id, r.payload, r.attempts, r.received_at) for r in rows),
                  key=lambda c: c.id)


def finish(conn: Connection, event_id: int, worker: str, outcome: str) -> bool:
    """Mark done; False when the lease was lost (another worker took the row)."""
    res = conn.execute(_FINISH, {"id": event_id, "worker": worker, "outcome": outcome})
    return res.rowcount == 1


def reschedule(conn: Connection, event_id: int, worker: str, delay_s: float,
               error: str) -> bool:
    res = conn.execute(_RESCHEDULE, {"id": event_id, "worker": worker, "delay": delay_s,
                                     "error": error[:2000]})
    return res.rowcount == 1


def bury(conn: Connection, event_id: int, worker: str, error: str) -> bool:
    """The dead-letter list: kept, with the reason, until ``replay``."""
    res = conn.execute(_BURY, {"id": event_id, "worker": worker, "error": error[:2000]})
    return res.rowcount == 1


def extend_leases(conn: Connection, held: dict[int, str], lease_s: float) -> int:
    """Renew the leases of events still in hand (id -> worker): a slow write-back must not
    let another worker take the same event meanwhile."""
    if not held:
        return 0
    ids, workers = zip(*held.items(), strict=True)
    return conn.execute(_EXTEND, {"ids": list(ids), "workers": list(workers),
                                  "lease": lease_s}).rowcount


def release(conn: Connection, event_ids: list[int], worker: str) -> int:
    """Give back events claimed but not started (a worker stopping): due again at once."""
    if not event_ids:
        return 0
    return conn.execute(_RELEASE, {"ids": event_ids, "worker": worker}).rowcount


def dead_letters(conn: Connection, limit: int = 100) -> list[DeadLetter]:
    return [DeadLetter(r.id, r.source, r.ticket_id, r.ticket_ref, r.event_type, r.attempts,
                       r.last_error or "", r.received_at, r.done_at)
            for r in conn.execute(_DEAD, {"n": limit})]


def replay(conn: Connection, event_id: int) -> bool:
    """Put a dead letter back in the queue; False when ``event_id`` is not one."""
    return conn.execute(_REPLAY, {"id": event_id}).first() is not None


def queue_stats(conn: Connection) -> QueueStats:
    r = conn.execute(_STATS).one()
    return QueueStats(int(r.pending), int(r.processing), int(r.dead), float(r.oldest_s))


@contextmanager
def ticket_lock(db: Database, source: str, ticket_ref: str) -> Iterator[bool]:
    """Try to hold the one right to write to this ticket (a session advisory lock); yields
    whether it was taken. Two events for one ticket (a webhook and the pull, two
    subscriptions) never write at once, and a worker that dies releases it with its
    connection, while one that is merely slow keeps it."""
    key = f"cca-writeback:{source}:{ticket_ref}"
    with db.session() as conn:
        taken = bool(conn.execute(_TRY_LOCK, {"k": key}).scalar_one())
        try:
            yield taken
        finally:
            if taken:
                conn.execute(_UNLOCK, {"k": key})


def writeback_for(conn: Connection, source: str, ticket_ref: str) -> WritebackRow | None:
    r = conn.execute(_WRITEBACK_FOR, {"source": source, "ref": ticket_ref}).first()
    return WritebackRow(**r._mapping) if r else None


def start_writeback(conn: Connection, row: dict[str, Any]) -> WritebackRow:
    """Record a write before it is sent; the row already there wins (one write per ticket)."""
    conn.execute(_START_WRITEBACK, row)
    stored = writeback_for(conn, row["source"], row["ticket_ref"])
    assert stored is not None
    return stored


def update_unsent(conn: Connection, writeback_id: int, group_value: str | None,
                  priority_value: str | None, tags: list[str]) -> None:
    """What a write not yet sent will set, from the routing map as it is now (an analyst
    may have fixed the map before replaying a dead letter)."""
    conn.execute(_REROUTE_UNSENT, {"id": writeback_id, "group_value": group_value,
                                   "priority_value": priority_value, "tags": tags})


def mark_sent(conn: Connection, writeback_id: int) -> None:
    conn.execute(_SENT, {"id": writeback_id})


def record_correction(conn: Connection, row: dict[str, Any]) -> bool:
    """Store one correction; False when this event was recorded before."""
    return conn.execute(_CORRECTION, row).first() is not None


def purge_text(conn: Connection, received_before: datetime) -> int:
    """Blank the ticket text and customer of handled events older than the cutoff (the
    retention of raw text); the routing record and corrections stay."""
    return conn.execute(_PURGE_TEXT, {"cut": received_before}).rowcount


def erase(conn: Connection, refs: list[str], ticket_ids: list[str]) -> int:
    """Delete a customer's events (their write-back records and corrections go with them)."""
    return conn.execute(_ERASE, {"refs": refs, "ids": ticket_ids}).rowcount


def outcomes_since(conn: Connection, seconds: float) -> dict[str, dict[str, int]]:
    """Events received in the last ``seconds``, per source, by outcome (or state while not
    done): routed, review, own-write, correction…, pending, dead-letter."""
    out: dict[str, dict[str, int]] = {}
    for r in conn.execute(_OUTCOMES, {"secs": seconds}):
        out.setdefault(r.source, {})[r.outcome] = int(r.n)
    return out


def reroutes(conn: Connection) -> list[Reroutes]:
    """Per source and stage: tickets routed (not sent to review) and how many a person moved."""
    return [Reroutes(r.source, r.stage, int(r.routed), int(r.rerouted))
            for r in conn.execute(_REROUTES)]

"""Right to deletion across the service's stores: PostgreSQL, the Redis replay entries and
the near-duplicate index, with the audit keeping only an anonymised tombstone.

Run from ``DELETE /customers/{ref}``. The spool is flushed first and the other workers'
delivery round awaited, so tickets served just before the call are deleted too.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Protocol

from cca.errors import StateError
from cca.settings import Settings
from cca.store import Database, StoreUnavailable
from cca.store.served import customer_refs, erase_customer
from cca.store.vector_feed import VectorFeed
from redaction.sanitizer import canonical_customer
from serving.audit_spool import AuditSpool
from serving.idempotency import IdempotencyStore
from serving.redis_guard import RedisUnavailable

log = logging.getLogger("cca.serving")


class Engine(Protocol):
    """What an erasure needs of the service's engine (``serving.engine.Engine``), named here
    so this module does not import the engine that calls it."""

    settings: Settings
    db: Database
    spool: AuditSpool
    idempotency: IdempotencyStore
    vector_feed: VectorFeed | None
    pii_key: bytes
    database_up: bool

    def wait_for_other_workers(self) -> None: ...


def erase_customer_everywhere(engine: Engine, customer_ref: str, actor: str) -> dict[str, int]:
    """Every trace of a customer except the anonymised tombstone (see ``erase_customer``);
    counts of what went. ``StateError`` (503) when a store cannot be reached: then nothing in
    PostgreSQL is deleted and the caller retries."""
    # Known down (records waiting): say so at once instead of waiting on the spool.
    if not engine.spool.flush(timeout_s=10 if engine.database_up else 1):
        raise StateError("PostgreSQL is unreachable: erasure not done, try again later "
                         f"({engine.spool.pending} audit records waiting)")
    core = canonical_customer(customer_ref)
    if not core:
        raise ValueError("customer reference has no letters or digits")
    engine.wait_for_other_workers()
    try:
        return _erase(engine, core, actor)
    except StoreUnavailable as exc:
        raise StateError("PostgreSQL is unreachable: erasure not done, try again later"
                         ) from exc


def _erase(engine: Engine, core: str, actor: str) -> dict[str, int]:
    with engine.db.begin() as conn:
        refs = [r for r in customer_refs(conn, core) if canonical_customer(r) == core]
        subject = hmac.new(engine.pii_key, core.encode(), hashlib.sha256).hexdigest()
        done = erase_customer(conn, refs, subject, actor)
        counts = dict(done.counts)
        # Inside the transaction: if Redis cannot forget the replay entries, nothing is
        # deleted and the caller is told to retry, rather than half an erasure.
        try:
            counts["idempotency_keys"] = engine.idempotency.forget(done.ticket_ids)
        except RedisUnavailable as exc:
            raise StateError("Redis is unreachable: erasure not done, try again later"
                             ) from exc
    if engine.vector_feed is not None:
        # This worker's copy at once; the others drop them on the commit's notification.
        counts["in_memory_vectors"] = engine.vector_feed.forget(done.ticket_ids)
    counts["near_duplicate_keys"] = _forget_signatures(engine, done.ticket_ids)
    log.info("customer erased", extra={"tickets": counts.get("tickets", 0)})
    return counts


def _forget_signatures(engine: Engine, ticket_ids: list[str]) -> int:
    """Drop the erased tickets from the Redis near-duplicate index (it is rebuilt from
    PostgreSQL, where their signatures are already gone, when it is found out of sync)."""
    try:
        # deferred: datasketch comes with the lifecycle extra; without it the index is skipped
        from pipelines.dedup import forget_near_duplicates

        return forget_near_duplicates(engine.db, engine.settings, ticket_ids)
    except Exception as exc:  # Redis down: the next prepare run finds the index out of sync
        log.warning("near-duplicate index not updated (%s)", type(exc).__name__)
        return 0

"""Right to deletion across the service's stores: PostgreSQL, the Redis replay entries and
near-duplicate index, and the ticket files kept under the inbox, with the audit keeping only
an anonymised tombstone.

Run from ``POST /customers/erase``. The spool is flushed first and the other workers'
delivery round awaited, so tickets served just before the call are deleted too.

All or nothing: every store is changed inside the PostgreSQL transaction, before it commits
(Redis keys deleted, rewritten inbox files staged). If one cannot be reached the transaction
rolls back, the staged files go, the failure is counted (``cca_erasure_failures_total``) and
the caller gets 503 and retries; the retry finds everything still there. A Redis entry
deleted before a rollback is no loss: replays fall back to PostgreSQL and the near-duplicate
index, found smaller than PostgreSQL's signatures, is rebuilt by the next prepare run.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import weakref
from typing import Protocol

import redis
from prometheus_client import Counter
from sqlalchemy.engine import Connection

from cca.errors import StateError
from cca.settings import Settings
from cca.store import Database, StoreUnavailable, dedup_repo
from cca.store.served import customer_refs, erase_customer
from cca.store.vector_feed import VectorFeed
from pipelines.erase_files import StagedFiles, stage_inbox_erasure, stage_report_scrub
from redaction.sanitizer import canonical_customer
from serving.audit_spool import AuditSpool
from serving.idempotency import IdempotencyStore
from serving.metrics import ServiceMetrics
from serving.redis_guard import RedisUnavailable
from serving.spool_erasure import blank_delivered

log = logging.getLogger("cca.serving")

STORES = ("postgres", "redis_replay", "redis_near_duplicates", "files")
_counters: weakref.WeakKeyDictionary[object, Counter] = weakref.WeakKeyDictionary()


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
    metrics: ServiceMetrics

    def wait_for_other_workers(self) -> None: ...


def failures(metrics: ServiceMetrics) -> Counter:
    """``cca_erasure_failures_total{store}``: erasures refused (503) because a store could
    not be reached; each one is retried by the caller. Kept in the service's own registry."""
    registry = metrics.registry
    if registry not in _counters:
        counter = Counter("cca_erasure_failures", "Right-to-deletion requests refused (503, "
                          "nothing changed; the caller retries) because a store could not be "
                          "reached, by store.", ["store"], registry=registry)
        for store in STORES:
            counter.labels(store)
        _counters[registry] = counter
    return _counters[registry]


def erase_customer_everywhere(engine: Engine, customer_ref: str, actor: str) -> dict[str, int]:
    """Every trace of a customer except the anonymised tombstone (see ``erase_customer``);
    counts of what went. ``StateError`` (503) when a store cannot be reached: then nothing is
    changed and the caller retries."""
    core = canonical_customer(customer_ref)
    if not core:
        raise ValueError("customer reference has no letters or digits")
    # Known down (records waiting): say so at once instead of waiting on the spool.
    if not engine.spool.flush(timeout_s=10 if engine.database_up else 1):
        failures(engine.metrics).labels("postgres").inc()
        raise StateError("PostgreSQL is unreachable: erasure not done, try again later "
                         f"({engine.spool.pending} audit records waiting)")
    engine.wait_for_other_workers()
    try:
        return _erase(engine, core, actor)
    except StoreUnavailable as exc:
        failures(engine.metrics).labels("postgres").inc()
        raise StateError("PostgreSQL is unreachable: erasure not done, try again later"
                         ) from exc


def _erase(engine: Engine, core: str, actor: str) -> dict[str, int]:
    staged = StagedFiles()
    try:
        with engine.db.begin() as conn:
            refs = [r for r in customer_refs(conn, core) if canonical_customer(r) == core]
            subject = hmac.new(engine.pii_key, core.encode(), hashlib.sha256).hexdigest()
            done = erase_customer(conn, refs, subject, actor, core=core)
            counts = dict(done.counts)
            counts["near_duplicate_keys"] = _forget_signatures(engine, conn, done.ticket_ids)
            counts["idempotency_keys"] = _forget_replays(engine, done.ticket_ids)
            staged = _stage_files(engine, core, refs, done.ticket_ids)
            counts["inbox_records"] = staged.records
            counts["spool_lines"] = staged.spool_lines
    except BaseException:
        staged.abort()
        raise
    counts["files_rewritten"] = staged.commit()
    if engine.vector_feed is not None:
        # This worker's copy at once; the others drop them on the commit's notification.
        counts["in_memory_vectors"] = engine.vector_feed.forget(done.ticket_ids)
    log.info("customer erased", extra={"tickets": counts.get("tickets", 0)})
    return counts


def _refused(engine: Engine, store: str, what: str) -> StateError:
    failures(engine.metrics).labels(store).inc()
    return StateError(f"{what}: erasure not done, try again later")


def _forget_replays(engine: Engine, ticket_ids: list[str]) -> int:
    try:
        return engine.idempotency.forget(ticket_ids)
    except RedisUnavailable as exc:
        raise _refused(engine, "redis_replay", "Redis is unreachable (replay entries)") from exc


def _forget_signatures(engine: Engine, conn: Connection, ticket_ids: list[str]) -> int:
    """Drop the erased tickets from the Redis near-duplicate index, inside the transaction:
    Redis down is a 503 with nothing deleted, never a skipped step."""
    if not ticket_ids:
        return 0
    try:
        try:
            # deferred: datasketch comes with the lifecycle extra
            from pipelines.dedup import forget_near_duplicates
        except ImportError:
            return _drop_near_duplicate_index(engine.settings, conn)
        return forget_near_duplicates(conn, engine.settings, ticket_ids)
    except (StateError, redis.RedisError) as exc:
        raise _refused(engine, "redis_near_duplicates",
                       "Redis is unreachable (near-duplicate index)") from exc


def _drop_near_duplicate_index(settings: Settings, conn: Connection) -> int:
    """Without datasketch the entries cannot be found one by one: the whole index of this
    database goes, and the next prepare run rebuilds it from PostgreSQL's signatures
    (which no longer hold the erased tickets)."""
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    keys = list(client.scan_iter(match=f"cca:lsh:{dedup_repo.namespace(conn)}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start:start + 500])
    return len(keys)


def _stage_files(engine: Engine, core: str, refs: list[str], ticket_ids: list[str]
                 ) -> StagedFiles:
    """Files under CCA_HOME: the inbox's records staged for removal, ids and references in
    validation results and reports staged for replacement, delivered spool lines blanked
    (see ``serving.spool_erasure``; harmless if the transaction then rolls back)."""
    s = engine.settings
    try:
        staged = stage_inbox_erasure(s.inbox, core, ticket_ids)
        stage_report_scrub((s.ge_home, s.reports_dir), [*ticket_ids, *refs], staged)
        staged.spool_lines = blank_delivered(s.spool_dir, [*ticket_ids, *refs])
        return staged
    except OSError as exc:
        raise _refused(engine, "files", f"files under CCA_HOME could not be rewritten ({exc})"
                       ) from exc

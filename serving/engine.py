"""The service's core without HTTP: replay or classify, spool the audit, feed the shadow.

Runs on the cascade's worker thread (``serving.batcher``). The order is what makes a retried
webhook safe: a decision is fsync'ed in the spool before it is answered or put in Redis, so a
replay never returns something the audit could lose. (With Redis down the spool delivers to
PostgreSQL at once, possibly before its own fsync: the database then holds it durably.)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any

from cascade.cascade import Cascade, Work
from cca.keys import load_or_create_key
from cca.settings import Settings
from cca.store import Database, RecordRefused
from cca.store.quarantine import QuarantineItem, quarantine
from cca.store.served import record_served, served_decisions
from cca.store.vector_feed import VectorFeed
from cca.tickets import Ticket
from serving.audit_spool import AuditSpool
from serving.batch import (
    InBatch,
    Job,
    Pending,
    Served,
    answer_repeats,
    replay_known,
    to_classify,
)
from serving.erasure import erase_customer_everywhere, failures
from serving.idempotency import IdempotencyStore
from serving.metrics import ServiceMetrics
from serving.replay_lookup import Pair, ReplayLookup, Stored
from serving.shadow import ShadowRunner

log = logging.getLogger("cca.serving")

# Batches up to this size are classified while the replay lookup runs (see ``handle``).
_CLASSIFY_WHILE_LOOKING_UP = 8
# With Redis down, how long a lookup may wait for the spool to deliver first.
_FLUSH_BEFORE_LOOKUP_S = 1.0


class Engine:
    """One per worker: answers the batcher's batches of jobs (``handle``), audits every
    decision through its spool, and erases a customer on request."""

    def __init__(self, settings: Settings, db: Database, cascade: Cascade,
                 metrics: ServiceMetrics, shadow: ShadowRunner | None = None,
                 spool_name: str = "worker-1", vector_feed: VectorFeed | None = None) -> None:
        self.settings, self.db, self.cascade, self.metrics = settings, db, cascade, metrics
        failures(metrics)  # cca_erasure_failures_total is exported (at 0) from the start
        self.shadow, self.vector_feed = shadow, vector_feed
        key = (settings.pii_hmac_key.get_secret_value().encode() if settings.pii_hmac_key
               else load_or_create_key(settings.secrets_dir / "pii_hmac.key"))
        self._key = key
        self.spool = AuditSpool(settings.spool_dir / spool_name, self._deliver,
                                flush_interval_s=settings.serve_audit_flush_ms / 1000,
                                on_sink_error=self._sink_failed)
        self.idempotency = IdempotencyStore(settings.redis_url, settings.serve_idempotency_ttl_s,
                                            self._replay_from_db)
        self.database_up = True
        self.on_state: Callable[[], None] | None = None
        # Decisions made but not yet fsync'ed (so not yet in the idempotency store): a retry
        # arriving meanwhile replays them, and its answer waits for the same fsync.
        self._not_durable: dict[Pair, Served] = {}
        self._not_durable_lock = threading.Lock()
        self._llm_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cca-llm-batch")
        self.replay = ReplayLookup(self.idempotency,
                                   settings.serve_replay_lookup_timeout_ms / 1000,
                                   self._deliver_before_lookup, _FLUSH_BEFORE_LOOKUP_S)

    def start(self) -> None:
        self.spool.start()
        if self.shadow is not None:
            # Shadow records are never replayed: they wait for the next delivery round.
            self.shadow.start(partial(self.spool.append, deliver_now=False))

    def close(self) -> None:
        self._llm_pool.shutdown(wait=True)
        self.replay.close()
        if self.shadow is not None:
            self.shadow.close()
        # The spool first: its last fsyncs hand their decisions to the idempotency store,
        # whose close then sends them to Redis.
        self.spool.close()
        self.idempotency.close()
        if self.vector_feed is not None:
            self.vector_feed.close()

    # -- the request path -------------------------------------------------------------
    def request_hash(self, ticket: Ticket) -> str:
        """Keyed hash of what the caller sent: the same id and content replay one decision."""
        given = ticket.model_dump(mode="json", exclude_unset=True)
        given.pop("id", None)
        payload = json.dumps(given, sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    def handle(self, jobs: list[Job]) -> list[Served | Pending]:
        """Replays from the idempotency store, one cascade batch for the rest, audit spooled.

        Tickets that need the LLM come back as ``Pending``: they finish on the LLM threads,
        so the others in the batch are answered without waiting for an LLM round trip.
        """
        t0 = time.perf_counter()
        batch = [InBatch(j, self.request_hash(j.ticket)) for j in jobs]
        self._find_not_durable(batch)
        stored, waiting = self._look_up_and_classify(batch)
        replay_known(batch, stored)
        fresh = [t for t in batch if t.work is not None and t.answer is None]
        if fresh:
            self._answer_fresh(fresh, waiting)
        answer_repeats(batch)
        answers = [t.answer for t in batch if t.answer is not None]
        replays = sum(1 for a in answers if a.replayed)
        if replays:
            self.metrics.replays.inc(replays)
        self.state_changed()
        log.debug("batch done", extra={"tickets": len(jobs), "replays": replays,
                                       "ms": round((time.perf_counter() - t0) * 1000, 2)})
        return answers

    def _find_not_durable(self, batch: list[InBatch]) -> None:
        """Decisions not yet fsync'ed, looked at before the replay lookup starts: one that
        becomes durable meanwhile enters the idempotency store before it leaves this map, so
        the lookup after sees it."""
        with self._not_durable_lock:
            if self._not_durable:
                for t in batch:
                    t.unsynced = self._not_durable.get(t.pair)

    def _look_up_and_classify(self, batch: list[InBatch]) -> tuple[Stored, list[Work]]:
        """The lookup's answer for every ticket, and the classified tickets still waiting for
        the LLM (each classified ticket gets its ``work``).

        "Seen before?" (Redis, then PostgreSQL for Redis' misses: Redis restarted, or the
        entry expired) runs on the lookup thread while the cascade classifies the batch; a
        ticket found there is replayed and its fresh decision dropped unseen. Replays are
        rare (retried webhooks), so for a few tickets classifying them anyway costs less
        than this thread waiting on two round trips; a large batch asks first. The lookup
        has a deadline from its start (``serving.replay_lookup``): past it, the tickets
        count as new.
        """
        pairs = [t.pair for t in batch]
        seen, deadline = self.replay.start(pairs)
        stored: Stored | None = None
        if len(batch) > _CLASSIFY_WHILE_LOOKING_UP or seen.done():
            stored = self.replay.result(seen, deadline, len(pairs))
        todo = to_classify(batch, stored)
        waiting: list[Work] = []
        if todo:
            work, waiting = self.cascade.start_batch([t.job.ticket for t in todo])
            for t, w in zip(todo, work, strict=True):
                t.work = w
        if stored is None:
            stored = self.replay.result(seen, deadline, len(pairs))
        return stored, waiting

    def _answer_fresh(self, fresh: list[InBatch], waiting: list[Work]) -> None:
        """Answer the tickets the cheaper stages decided; those ``waiting`` for the LLM get a
        ``Pending`` and finish on the LLM threads."""
        self.metrics.batch_size.observe(len(fresh))
        later_ids = {id(w) for w in waiting}
        if later_ids and not self.cascade.llm_can_answer:
            # Review at once: no call will be made.
            self.cascade.finish_batch([t.work for t in fresh if id(t.work) in later_ids])
            later_ids = set()
        done = [t for t in fresh if id(t.work) not in later_ids]
        later = [t for t in fresh if id(t.work) in later_ids]
        for t, served in zip(done, self._record(done), strict=True):
            t.answer = served
        if later:
            future = self._llm_pool.submit(self._finish_later, later)
            for k, t in enumerate(later):
                t.answer = Pending(future, k)

    def _deliver_before_lookup(self) -> None:
        """With Redis down, PostgreSQL answers "seen before?", so decisions this worker made
        while Redis was up, and left for the spool's next round, must be there first."""
        if self.spool.pending and self.database_up:
            self.spool.flush(timeout_s=_FLUSH_BEFORE_LOOKUP_S)

    def _record(self, items: list[InBatch]) -> list[Served]:
        """Spool (durable), then make replayable, count, and hand to the shadow."""
        if not items:
            return []
        now = datetime.now(UTC).isoformat()
        records = [t.audit_record(now) for t in items]
        # Durable before anyone can replay it, and before it is answered (the caller waits for
        # ``durable``); the fsync runs off this thread, which goes on with the next batch.
        # Delivered to PostgreSQL at once only while Redis is down, when PostgreSQL is where
        # another worker looks for a retried ticket.
        durable = self.spool.append_nowait(records, deliver_now=not self.idempotency.redis_up)
        decisions = [t.work.decision for t in items
                     if t.work is not None and t.work.decision is not None]
        served = [Served(d, False, durable) for d in decisions]
        replayable = [(t.job.ticket.id, t.request_hash, r["decision"])
                      for t, r in zip(items, records, strict=True)]
        with self._not_durable_lock:
            for (tid, h, _), s in zip(replayable, served, strict=True):
                self._not_durable[(tid, h)] = s
        # Registered first: a future already done runs the callback here, at once.
        durable.add_done_callback(partial(self._now_durable, replayable))
        self.metrics.observe_decisions(decisions)
        if self.shadow is not None:
            self.shadow.submit([t.job.ticket for t in items], decisions)
        return served

    def _now_durable(self, items: list[tuple[str, str, dict[str, Any]]],
                     durable: Future[None]) -> None:
        """Once fsync'ed: into the idempotency store (this process replays from its memory
        until Redis has it), then out of the not-durable map. A failed fsync makes nothing
        replayable: that request fails, and a retry is classified again."""
        try:
            if not durable.cancelled() and durable.exception() is None:
                self.idempotency.put_many(items, wait=False)
        except Exception:  # the store is closing: a retry then finds the record in PostgreSQL
            log.exception("decisions not handed to the idempotency store")
        finally:
            with self._not_durable_lock:
                for tid, h, _ in items:
                    self._not_durable.pop((tid, h), None)

    def _finish_later(self, later: list[InBatch]) -> list[Served]:
        """The LLM stage for the tickets ``start_batch`` left waiting (on an LLM thread)."""
        self.cascade.finish_batch([t.work for t in later if t.work is not None])
        served = self._record(later)
        self.state_changed()
        return served

    def state_changed(self) -> None:
        """Keep the health gauges current (set by the runtime)."""
        if self.on_state is not None:
            self.on_state()

    # -- the audit sink (spool thread) ------------------------------------------------
    def _deliver(self, records: list[dict[str, Any]]) -> None:
        try:
            with self.db.begin() as conn:
                record_served(conn, records)
        except RecordRefused:
            # The database refused the data, not the connection: retrying the batch forever
            # would stop the audit. Store record by record; what is refused is quarantined.
            self._deliver_one_by_one(records)
        if not self.database_up:
            log.info("PostgreSQL is back: audit records flushed",
                     extra={"pending": self.spool.pending})
            self.database_up = True
            self.state_changed()

    def _deliver_one_by_one(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            try:
                with self.db.begin() as conn:
                    record_served(conn, [record])
            except RecordRefused as exc:
                reason = str(exc.orig or exc).strip().splitlines()[0][:300]
                tid = record.get("ticket", {}).get("id") or record.get("ticket_id", "?")
                with self.db.begin() as conn:
                    quarantine(conn, [QuarantineItem(
                        stage="serve-audit", source="api", location=f"ticket:{tid}",
                        reason=f"audit record refused by PostgreSQL: {reason}",
                        payload=record)])
                log.error("audit record quarantined", extra={"error": type(exc).__name__})

    def _sink_failed(self, exc: Exception) -> None:
        if self.database_up:
            self.database_up = False
            self.state_changed()

    def _replay_from_db(self, items: list[tuple[str, str]]) -> list[dict | None]:
        return self.db.read(lambda conn: served_decisions(conn, items))

    # -- right to deletion ------------------------------------------------------------
    def erase(self, customer_ref: str, actor: str) -> dict[str, int]:
        """Every trace of a customer except the anonymised tombstone (``serving.erasure``)."""
        return erase_customer_everywhere(self, customer_ref, actor)

    def wait_for_other_workers(self) -> None:
        """Other workers (and replicas) deliver their audit records at least once per
        ``serve_audit_flush_ms``: after that, what they served before this call is stored."""
        time.sleep(self.settings.serve_audit_flush_ms / 1000 * 1.2 + 0.02)

    @property
    def pii_key(self) -> bytes:
        """The home's HMAC key (request hashes, erasure tombstones)."""
        return self._key

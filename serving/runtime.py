"""Everything the service holds while it runs: database, champion (and challenger) cascades,
the engine with its spool, the rate limiter; built once per worker at start.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from cascade.cascade import Cascade
from cca.bundle import load_bundle
from cca.errors import StateError, UnknownTicket
from cca.settings import Settings
from cca.store import Database, StoreUnavailable, open_database
from cca.store.served import explanations as stored_explanations
from cca.store.vector_feed import VectorFeed
from cca.tickets import Ticket
from pipelines.feedback import apply_feedback
from serving import worker_index
from serving.audit_spool import SpoolLockedError
from serving.batch import Job, Pending, Served
from serving.engine import Engine
from serving.explainer import Explainer
from serving.intake import Intake, IntakeWorkers, queue_status, start_intake
from serving.metrics import LLM_OUTCOMES, ServiceMetrics
from serving.model_source import ModelChoice, resolve
from serving.ratelimit import RateLimiter
from serving.shadow import ShadowRunner

log = logging.getLogger("cca.serving")


def build_cascade(settings: Settings, db: Database, choice: ModelChoice) -> Cascade:
    bundle = load_bundle(settings.models_dir, choice.bundle_version)
    return Cascade.of_bundle(settings, db, bundle)


def start_vector_feed(settings: Settings, db: Database, cascade: Cascade) -> VectorFeed | None:
    """The in-memory copy of the labelled vectors that the cascade searches, kept in step
    with PostgreSQL (and the track records with it); None when configured off."""
    if settings.cache_memory_max_vectors <= 0:
        return None
    feed = VectorFeed(db, cascade.embedder.model_id, cascade.embedder.dim,
                      settings.cache_memory_max_vectors,
                      on_track_record=cascade.refresh_track_records)
    in_memory = feed.start()
    cascade.vector_search = feed.search
    log.info("vector cache searches %s", f"an in-memory copy of {len(feed.index)} vectors"
             if in_memory else "pgvector")
    return feed


def _engine(settings: Settings, db: Database, cascade: Cascade, metrics: ServiceMetrics,
            shadow: ShadowRunner | None, feed: VectorFeed | None, prefix: str) -> Engine:
    """The engine on a spool directory no other live process holds. Names are stable, so a
    restarted process delivers what a killed one left in its spool."""
    index = worker_index()
    for n in ([index or 1] if index is not None or prefix == "worker" else range(1, 65)):
        try:
            return Engine(settings, db, cascade, metrics, shadow,
                          spool_name=f"{prefix}-{n}", vector_feed=feed)
        except SpoolLockedError:
            if index is not None or prefix == "worker":
                raise
    raise StateError(f"every audit spool {prefix}-1..64 under {settings.spool_dir} is in use")


@dataclass
class Runtime:
    settings: Settings
    db: Database
    metrics: ServiceMetrics
    champion: ModelChoice
    cascade: Cascade
    engine: Engine
    limiter: RateLimiter
    explainer: Explainer
    challenger: ModelChoice | None = None
    ready: bool = False
    intake: Intake | None = None
    intake_workers: IntakeWorkers | None = None
    _llm_seen: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(cls, settings: Settings, metrics: ServiceMetrics,
              spool_prefix: str = "worker") -> Runtime:
        """``spool_prefix``: the audit spool's directory name; a BentoML worker uses its own
        index, any other process (``cca worker``) the first free ``<prefix>-N``."""
        threads = settings.serve_embedding_threads or max(
            1, (os.cpu_count() or 1) // settings.serve_workers)
        settings = settings.model_copy(update={"embedding_threads": threads})
        db = open_database(settings)
        champion = resolve(settings, "champion")
        assert champion is not None
        cascade = build_cascade(settings, db, champion)
        feed = start_vector_feed(settings, db, cascade)
        shadow = None
        challenger = resolve(settings, "challenger") if settings.serve_shadow else None
        if challenger is not None and challenger.bundle_version == champion.bundle_version:
            challenger = None
        if challenger is not None:
            shadow_cascade = build_cascade(settings, db, challenger)
            if feed is not None and shadow_cascade.embedder.model_id == feed.index.model_id:
                shadow_cascade.vector_search = feed.search
                feed.on_track_record(shadow_cascade.refresh_track_records)
            shadow = ShadowRunner(shadow_cascade, cascade.version, metrics)
        engine = _engine(settings, db, cascade, metrics, shadow, feed, spool_prefix)
        engine.start()
        limiter = RateLimiter(settings.redis_url, settings.rate_limit_per_s,
                              settings.rate_limit_burst, lease=settings.rate_limit_lease,
                              workers=settings.serve_workers)
        metrics.model_info.labels(
            champion_bundle=champion.bundle_version,
            champion_registry_version=champion.registry_version or "",
            champion_source=champion.source, cascade_version=cascade.version,
            challenger_bundle=challenger.bundle_version if challenger else "").set(1)
        # The first batch pays for lazy loading (spaCy, ONNX sessions, SQL statements):
        # pay it before /readyz says ready, not on a caller's request.
        # start_batch only: the warm-up must not cost an LLM call.
        cascade.start_batch([Ticket(id="warm-up", body="warm up the models")])
        log.info("serving", extra={"model": cascade.version, "source": champion.source})
        explainer = Explainer(cascade.llm, cascade.sanitizer, engine.spool.append,
                              lambda: cascade.llm_can_answer)
        explainer.start()
        runtime = cls(settings, db, metrics, champion, cascade, engine, limiter, explainer,
                      challenger, ready=True)
        engine.on_state = runtime.refresh_gauges
        runtime.refresh_gauges()
        return runtime

    def start_intake(self, run: Callable[[list[Job]], list[Served | Pending]],
                     workers: int) -> None:
        """The ticketing loop (``serving.intake``): ``run`` classifies on the cascade thread."""
        self.intake, self.intake_workers = start_intake(
            self.settings, self.db, sorted(set(self.cascade.bundle.info.departments.values())),
            run, self.feedback, self.metrics, workers,
            name=f"{socket.gethostname()}-{os.getpid()}")

    def feedback(self, ticket_id: str, label: str, actor: str) -> str:
        """The continuous-learning loop (``pipelines.feedback``), then the cache's new track record.

        Waits for the spool first, so a ticket classified a moment ago is in the store; a
        ticket still unknown may have been served by another worker, so it is looked up once
        more after that worker's delivery interval."""
        if not self.engine.spool.flush(timeout_s=10 if self.engine.database_up else 1):
            raise StateError("PostgreSQL is unreachable: feedback not stored, try again later")
        apply = partial(apply_feedback, self.settings, self.db, ticket_id, label,
                        bundle=self.cascade.bundle,
                        embedders=[e for e in (self.cascade.embedder,
                                               self.cascade.deep_embedder) if e])
        try:
            try:
                message = apply()
            except UnknownTicket:
                self.engine.wait_for_other_workers()
                message = apply()
            # The caller's next ticket must find this one in the cache: the feed's catch-up
            # also means its track-record refresh has run (the other workers get both from
            # the same notifications, within milliseconds). Without a feed, refresh here.
            feed = self.engine.vector_feed
            if feed is None or not feed.catch_up():
                self.cascade.refresh_track_records()
        except StoreUnavailable as exc:
            raise StateError("PostgreSQL is unreachable: feedback not stored, try again "
                             "later") from exc
        return message

    def explanations(self, ticket_id: str) -> list[dict[str, Any]]:
        """Stored LLM explanations of a ticket, newest first (and one not yet delivered)."""
        try:
            with self.db.begin() as conn:
                rows = stored_explanations(conn, ticket_id)
        except StoreUnavailable:
            rows = []
        recent = self.explainer.recent(ticket_id)
        if recent is not None and not any(r["explanation"] == recent["explanation"]
                                          for r in rows):
            rows.insert(0, {k: recent[k] for k in (
                "ticket_id", "text_hash", "label", "explanation", "model", "prompt_tokens",
                "completion_tokens", "cost_usd")} | {"created_at": recent["at"]})
        return rows

    def refresh_gauges(self) -> None:
        m = self.metrics
        m.spool_pending.set(self.engine.spool.pending)
        m.database_up.set(1 if self.engine.database_up else 0)
        m.redis_up.set(1 if getattr(self.engine.idempotency, "redis_up", True) else 0)
        llm = self.cascade.llm
        state = getattr(llm, "state", "closed")
        m.llm_breaker_open.set(1 if state == "open" else 0)
        stats = llm.stats() if hasattr(llm, "stats") else {}
        budget = getattr(llm, "budget", None)
        if budget is not None and budget.limit_usd is not None:
            spent = budget.spent_today()
            m.llm_spend_today.set(spent)
            m.llm_budget_exhausted.set(1 if spent >= budget.limit_usd else 0)
        # The stage counts since start; the counters get what is new since the last look.
        for key, counter in (("prompt_tokens", m.llm_tokens.labels("prompt")),
                             ("completion_tokens", m.llm_tokens.labels("completion")),
                             *((k, m.llm_calls.labels(k)) for k in LLM_OUTCOMES)):
            total = int(stats.get(key, 0) or 0)
            delta = total - self._llm_seen.get(key, 0)
            if delta > 0:
                counter.inc(delta)
                self._llm_seen[key] = total

    def status(self) -> dict[str, Any]:
        self.refresh_gauges()
        return {
            "champion": vars(self.champion), "cascade_version": self.cascade.version,
            "challenger": vars(self.challenger) if self.challenger else None,
            "database_up": self.engine.database_up,
            "audit_spool_pending": self.engine.spool.pending,
            "redis_up": getattr(self.engine.idempotency, "redis_up", None),
            "llm": {"stage": getattr(self.cascade.llm, "name", "?"),
                    "circuit": getattr(self.cascade.llm, "state", "closed")},
            "llm_explanations": self.explainer.stats(),
            "vector_cache": (self.engine.vector_feed.status() if self.engine.vector_feed
                             else {"in_memory": False, "searches": "pgvector"}),
            "replay_lookups": self.engine.replay.status(),
            "intake": (queue_status(self.db, self.metrics) | {
                "webhooks": sorted(self.intake.parsers),
                "workers": self.intake_workers.count if self.intake_workers else 0}
                if self.intake else None),
        }

    def close(self) -> None:
        self.ready = False
        if self.intake_workers is not None:
            self.intake_workers.close()
        self.explainer.close()
        self.engine.close()
        self.db.dispose()

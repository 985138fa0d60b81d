"""The ticketing loop inside the service: webhooks accepted durably, workers that act on them.

A webhook is answered ``202`` only after its event is committed to PostgreSQL (the system of
record), so a vendor that got a 202 never needs to send it again; past
``CCA_INTAKE_MAX_PENDING`` waiting events the answer is ``503`` with ``Retry-After`` and the
vendor retries later. Workers (threads, ``CCA_INTAKE_WORKERS`` per service process, or
``cca worker``) claim due events under a lease and hand each to
``pipelines.integrations.loop.handle``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from cca.errors import CCAError
from cca.settings import Settings
from cca.store import Database, StoreUnavailable
from cca.store import intake_repo as repo
from cca.tickets import Decision, Ticket
from pipelines.integrations.events import WebhookEvent, WebhookRejected
from pipelines.integrations.loop import LoopParts, handle
from pipelines.integrations.writeback import WriteFailed
from serving.batch import Job, Pending, Served
from serving.metrics import ServiceMetrics

log = logging.getLogger("cca.intake")

WEBHOOK_MAX_BYTES = 1_000_000
_MAX_RETRY_AFTER_S = 3600.0
Parser = Callable[[Mapping[str, str], bytes], list[WebhookEvent]]


@dataclass(frozen=True)
class Accepted:
    stored: int
    duplicates: int
    ignored: int


class Intake:
    """The door: verify, parse, apply back-pressure, store; then wake a worker."""

    def __init__(self, settings: Settings, db: Database, parsers: dict[str, Parser],
                 metrics: ServiceMetrics) -> None:
        self.settings, self.db, self.parsers, self.metrics = settings, db, parsers, metrics
        self.wake = threading.Event()

    def accept(self, source: str, headers: Mapping[str, str], body: bytes) -> Accepted:
        """Store the delivery's events or raise ``WebhookRejected`` (nothing stored then)."""
        parser = self.parsers.get(source)
        if parser is None:
            raise WebhookRejected(404, f"no webhook for {source!r} is configured: set "
                                       f"CCA_{source.upper()}_WEBHOOK_SECRET")
        if len(body) > WEBHOOK_MAX_BYTES:
            raise WebhookRejected(413, f"webhook body over {WEBHOOK_MAX_BYTES} bytes")
        try:
            events = parser(headers, body)
        except RecursionError:
            raise WebhookRejected(400, "webhook body is nested too deeply") from None
        kept = [e for e in events if e.kind != "ignored"]
        for event in kept:
            if any("\x00" in str(v) for v in (event.subject, event.body, event.ticket_ref,
                                                event.customer_ref or "")):
                raise WebhookRejected(422, "ticket text contains a NUL character")
        stored = 0
        try:
            with self.db.begin() as conn:
                if kept and repo.waiting(conn) >= self.settings.intake_max_pending:
                    raise WebhookRejected(503, "intake queue is full "
                                               f"({self.settings.intake_max_pending} events "
                                               "waiting); retry later")
                for event in kept:
                    stored += repo.enqueue(conn, event.to_dict()) is not None
        except StoreUnavailable as exc:
            raise WebhookRejected(503, "PostgreSQL is unreachable: the event was not "
                                       "stored; retry later") from exc
        if stored:
            self.wake.set()
        return Accepted(stored, len(kept) - stored, len(events) - len(kept))


def engine_classifier(run: Callable[[list[Job]], list[Served | Pending]]) -> Callable[
        [Ticket], Decision]:
    """Classify through the service's engine (replayed, audited like any request); the
    decision is used only once its audit record is durable."""

    def classify(ticket: Ticket) -> Decision:
        (result,) = run([Job(ticket, f"webhook:{ticket.source}", "", "webhook")])
        served = result.future.result()[result.index] if isinstance(result, Pending) else result
        if served.durable is not None:
            served.durable.result(timeout=60)
        return served.decision

    return classify


class IntakeWorkers:
    """``count`` threads that claim and handle events until ``close``."""

    def __init__(self, settings: Settings, db: Database, parts: LoopParts,
                 metrics: ServiceMetrics, count: int, name: str,
                 wake: threading.Event | None = None) -> None:
        self.settings, self.db, self.parts, self.metrics = settings, db, parts, metrics
        self.count, self.name = count, name
        self.wake = wake or threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._held: dict[int, str] = {}  # events claimed and not yet settled -> worker
        self._held_lock = threading.Lock()

    def start(self) -> None:
        for i in range(self.count):
            t = threading.Thread(target=self._run, args=(f"{self.name}-{i + 1}",),
                                 name=f"cca-intake-{i + 1}", daemon=True)
            t.start()
            self._threads.append(t)
        beat = threading.Thread(target=self._heartbeat, name="cca-intake-lease", daemon=True)
        beat.start()
        self._threads.append(beat)

    def _heartbeat(self) -> None:
        """Renew the leases of every event in hand, three times per lease."""
        while not self._stop.wait(self.settings.intake_lease_s / 3):
            with self._held_lock:
                held = dict(self._held)
            try:
                with self.db.begin() as conn:
                    repo.extend_leases(conn, held, self.settings.intake_lease_s)
            except Exception as exc:  # the heartbeat must outlive any one failure
                log.warning("intake: leases not renewed: %s", type(exc).__name__)

    def close(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self.wake.set()
        for t in self._threads:
            t.join(timeout_s)

    def _run(self, worker: str) -> None:
        while not self._stop.is_set():
            try:
                worked = self.run_once(worker)
            except StoreUnavailable:
                log.warning("intake: PostgreSQL unreachable; retrying")
                worked = 0
            except Exception:  # a worker thread must outlive any one failure
                log.exception("intake worker failed; continuing")
                worked = 0
            if not worked:
                self.wake.wait(self.settings.intake_poll_s)
                self.wake.clear()

    def run_once(self, worker: str) -> int:
        """Claim one batch of due events and handle each; how many were claimed."""
        with self.db.begin() as conn:
            claimed = repo.claim(conn, worker, self.settings.intake_batch_size,
                                 self.settings.intake_lease_s,
                                 self.settings.writeback_max_attempts)
        with self._held_lock:
            self._held.update((item.id, worker) for item in claimed)
        try:
            for n, item in enumerate(claimed):
                if self._stop.is_set():  # stopping: the rest are due again at once
                    with self.db.begin() as conn:
                        repo.release(conn, [i.id for i in claimed[n:]], worker)
                    break
                self._one(worker, item)
        finally:
            with self._held_lock:
                for item in claimed:
                    self._held.pop(item.id, None)
        return len(claimed)

    def _one(self, worker: str, item: repo.Claimed) -> None:
        source = str(item.payload.get("source"))
        try:
            outcome = handle(self.parts, item)
        except WriteFailed as exc:
            self._failed(worker, item, source, exc.reason, exc.retryable, exc.retry_after,
                         str(exc.status) if exc.status else "network")
            return
        except StoreUnavailable:
            raise
        except (CCAError, ValidationError) as exc:  # a ticket that cannot be taken as is
            self._failed(worker, item, source, str(exc).splitlines()[0], False, None, "input")
            return
        except Exception as exc:
            log.exception("intake event %s failed", item.id)
            self._failed(worker, item, source, f"{type(exc).__name__}: {exc}", True, None,
                         "error")
            return
        with self.db.begin() as conn:
            repo.finish(conn, item.id, worker, outcome)
        log.info("intake event handled", extra={"event": item.id, "source": source,
                                                 "outcome": outcome})

    def _failed(self, worker: str, item: repo.Claimed, source: str, reason: str,
                retryable: bool, retry_after: float | None, status: str) -> None:
        s = self.settings
        with self.db.begin() as conn:
            if retryable and item.attempts < s.writeback_max_attempts:
                backoff = min(s.writeback_max_backoff_s,
                              s.writeback_backoff_s * 2 ** (item.attempts - 1))
                # A vendor's Retry-After wins when longer, within reason (an hour).
                delay = min(max(backoff, retry_after or 0.0), _MAX_RETRY_AFTER_S)
                repo.reschedule(conn, item.id, worker, delay, reason)
                self.metrics.writebacks.labels(source, "retry", status).inc()
                log.warning("intake event %s: %s; retry in %.0f s", item.id, reason, delay)
                return
            repo.bury(conn, item.id, worker, reason)
        self.metrics.writebacks.labels(source, "dead-letter", status).inc()
        log.error("intake event %s dead-lettered after %d attempt(s): %s", item.id,
                  item.attempts, reason)


def queue_status(db: Database, metrics: ServiceMetrics) -> dict[str, Any]:
    """Queue depth, oldest waiting event, dead letters and reroute rates (for /status)."""
    try:
        with db.begin() as conn:
            stats = repo.queue_stats(conn)
            rates = repo.reroutes(conn)
            outcomes = repo.outcomes_since(conn, 24 * 3600)
    except StoreUnavailable:
        return {"available": False}
    metrics.intake_depth.set(stats.pending + stats.processing)
    metrics.intake_oldest.set(stats.oldest_age_s)
    metrics.intake_dead.set(stats.dead)
    return {"pending": stats.pending, "processing": stats.processing,
            "oldest_pending_s": round(stats.oldest_age_s, 3), "dead_letters": stats.dead,
            "outcomes_24h": outcomes,
            "reroutes": [{"source": r.source, "stage": r.stage, "routed": r.routed,
                          "rerouted": r.rerouted, "rate": round(r.rate, 4)} for r in rates]}


def start_intake(settings: Settings, db: Database, departments: list[str],
                 run: Callable[[list[Job]], list[Served | Pending]],
                 learn: Callable[[str, str, str], Any], metrics: ServiceMetrics,
                 workers: int, name: str) -> tuple[Intake | None, IntakeWorkers | None]:
    """The door and ``workers`` threads, when any vendor is configured (else both None).

    ``run`` classifies on the cascade thread; ``learn`` stores an agent's validated label."""
    # deferred: the vendors' modules are needed only where an integration is configured.
    from pipelines.integrations.vendors import (
        configured,
        routing_from_settings,
        webhook_parsers,
        writers_from_settings,
    )

    if not configured(settings):
        return None, None
    routing = routing_from_settings(settings, departments)
    parsers = webhook_parsers(settings, routing)
    intake = Intake(settings, db, parsers, metrics)
    if workers <= 0:
        return intake, None

    def learned(ticket_id: str, label: str, actor: str) -> None:
        try:
            learn(ticket_id, label, actor)
        except CCAError as exc:  # the correction is stored; only the label is not learnt
            log.warning("correction of %s not learnt as a label: %s", ticket_id, exc)

    parts = LoopParts(db, routing, writers_from_settings(settings, routing),
                      engine_classifier(run), learned,
                      on_write=lambda s, o: metrics.writebacks.labels(s, o, "ok").inc(),
                      on_reroute=lambda s, st: metrics.reroutes.labels(s, st).inc())
    pool = IntakeWorkers(settings, db, parts, metrics, workers, name, wake=intake.wake)
    pool.start()
    log.info("intake: webhooks for %s; write-back to %s; %d worker(s)",
             ", ".join(parsers) or "none", ", ".join(parts.writers) or "none", workers)
    return intake, pool

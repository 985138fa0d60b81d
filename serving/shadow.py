"""Shadow mode: the ``@challenger`` classifies the same tickets after the champion answered.

Its predictions are stored beside the champion's (``shadow_decisions``) and never returned.
It runs on its own thread behind a bounded queue: when the service is busy, shadow runs are
dropped (and counted) rather than delaying the champion's answers.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from cascade.cascade import Cascade
from cca.tickets import Decision, Ticket
from serving.metrics import ServiceMetrics

log = logging.getLogger("cca.serving.shadow")
_STOP = object()


class ShadowRunner:
    def __init__(self, challenger: Cascade, champion_version: str, metrics: ServiceMetrics,
                 queue_size: int = 16) -> None:
        self.challenger, self.champion_version = challenger, champion_version
        self.metrics = metrics
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._emit: Callable[[list[dict[str, Any]]], None] | None = None

    @property
    def version(self) -> str:
        return self.challenger.version

    def start(self, emit: Callable[[list[dict[str, Any]]], None]) -> None:
        self._emit = emit
        self._thread = threading.Thread(target=self._run, name="cca-shadow", daemon=True)
        self._thread.start()

    def submit(self, tickets: list[Ticket], decisions: list[Decision]) -> None:
        try:
            self._queue.put_nowait((tickets, decisions))
        except queue.Full:
            self.metrics.shadow_dropped.inc(len(tickets))

    def close(self, timeout_s: float = 5.0) -> None:
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout_s)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._compare(*item)
            except Exception:  # a challenger failure must never reach the champion's path
                log.exception("shadow run failed")

    def _compare(self, tickets: list[Ticket], champion: list[Decision]) -> None:
        t0 = time.perf_counter()
        theirs = self.challenger.classify_batch(tickets)
        ms = (time.perf_counter() - t0) * 1000 / max(len(tickets), 1)
        now = datetime.now(UTC).isoformat()
        records = []
        for ours, other in zip(champion, theirs, strict=True):
            agree = ours.label == other.label
            self.metrics.shadow.labels("agree" if agree else "disagree").inc()
            records.append({
                "kind": "shadow", "record_id": str(uuid.uuid4()), "at": now,
                "ticket_id": ours.ticket_id, "champion_version": ours.model_version,
                "challenger_version": other.model_version, "champion_stage": ours.stage,
                "challenger_stage": other.stage, "champion_label": ours.label,
                "challenger_label": other.label, "champion_conf": ours.confidence,
                "challenger_conf": other.confidence, "challenger_ms": round(ms, 3)})
        if self._emit is not None:
            self._emit(records)

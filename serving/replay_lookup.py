""""Seen before?" for a batch of tickets: Redis, then PostgreSQL for Redis' misses, with a
deadline, so a hung PostgreSQL (no error, no answer) never holds a request.

The lookup runs on its own daemon thread while the cascade classifies the batch. Past the
deadline the tickets count as new: classifying a ticket again is safe (the audit records
both), holding every request of the worker is not. While an overdue lookup is still stuck
on that thread, the next batches ask Redis alone, on the caller's thread, instead of
queueing behind it. The thread is a daemon: a call stuck on a hung server must not keep
the worker from exiting (the interpreter joins ``ThreadPoolExecutor`` threads at exit).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from serving.idempotency import IdempotencyStore

log = logging.getLogger("cca.serving")

Stored = list[dict[str, Any] | None]
Pair = tuple[str, str]  # (ticket id, request hash)


class ReplayLookup:
    """Counters for /status: ``timeouts`` (lookups past their deadline), ``redis_only``
    (batches asked of Redis alone while one was stuck)."""

    def __init__(self, idempotency: IdempotencyStore, timeout_s: float,
                 before_db: Callable[[], None], before_db_allowance_s: float) -> None:
        self.idempotency, self.timeout_s = idempotency, timeout_s
        # With Redis down, ``before_db`` (the spool's flush, so PostgreSQL holds what this
        # worker served) runs first and may take up to this long: it is added to the deadline.
        self._before_db, self._allowance_s = before_db, before_db_allowance_s
        self._overdue: Future[Stored] | None = None
        self.timeouts = self.redis_only = 0
        self._calls: queue.SimpleQueue[tuple[Future[Stored], list[Pair]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._run, name="cca-replay-lookup", daemon=True)
        self._thread.start()

    @property
    def stuck(self) -> bool:
        """An overdue lookup is still waiting (on PostgreSQL, most likely)."""
        return self._overdue is not None and not self._overdue.done()

    def status(self) -> dict[str, Any]:
        """For the service's /status."""
        return {"timeouts": self.timeouts, "redis_only": self.redis_only, "stuck": self.stuck}

    def start(self, pairs: list[Pair]) -> tuple[Future[Stored], float]:
        """The lookup under way and its deadline (``time.monotonic``)."""
        if self.stuck:
            self.redis_only += 1
            done: Future[Stored] = Future()
            done.set_result(self.idempotency.get_cached(pairs)[0])
            return done, 0.0
        future: Future[Stored] = Future()
        self._calls.put((future, pairs))
        allowance = 0.0 if self.idempotency.redis_up else self._allowance_s
        return future, time.monotonic() + self.timeout_s + allowance

    def result(self, future: Future[Stored], deadline: float, n: int) -> Stored:
        """The lookup's answer, or "not seen before" for all ``n`` once it is overdue."""
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            if self._overdue is None or self._overdue.done():
                log.warning("replay lookup overdue (%.0f ms): treating the batch as new and "
                            "asking Redis only until it returns (PostgreSQL not answering?)",
                            self.timeout_s * 1000)
                self._overdue = future
                future.add_done_callback(lambda _: log.info("replay lookups answer again"))
            self.timeouts += 1
            return [None] * n

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop after the queued lookups; a lookup stuck on a hung server is left behind."""
        self._calls.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("replay lookup thread still waiting on PostgreSQL at shutdown; "
                        "leaving it behind")

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            future, pairs = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self._seen_before(pairs))
            except BaseException as exc:  # handed to the waiting batch, which raises it
                future.set_exception(exc)

    def _seen_before(self, pairs: list[Pair]) -> Stored:
        stored, misses = self.idempotency.get_cached(pairs)
        if misses and not self.idempotency.redis_up:
            self._before_db()
        if misses:
            self.idempotency.fill_from_db(pairs, misses, stored)
        return stored

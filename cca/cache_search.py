"""The vector cache's pgvector search, on a thread of its own.

The search is a round trip to PostgreSQL: under load most of it is waiting for the backend to
be scheduled (1.7 of 2.9 ms of the cascade thread's time per served batch, measured on 2
cores at 200 requests/s). Sent from here, it runs while the cascade thread scores the same
tickets with the classifier, instead of after it.
"""

from __future__ import annotations

import logging
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import sqlalchemy as sa

from cca.store import Database
from cca.store.vectors import nearest
from cca.tickets import Neighbour

log = logging.getLogger("cca.cascade")

# The neighbours of each query vector, and the search's own wall time (ms)
Found = tuple[list[list[Neighbour]], float]


class CacheSearch:
    def __init__(self, db: Database, model_id: str, top_k: int) -> None:
        self.db, self.model_id, self.top_k = db, model_id, top_k
        # One thread: one search per batch is in flight at a time (the cascade waits for it).
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cca-search")
        weakref.finalize(self, self._pool.shutdown, wait=False)

    def submit(self, vectors: np.ndarray) -> Future[Found]:
        """Start the search; ``result()`` gives the neighbours (none while PostgreSQL is down)."""
        return self._pool.submit(self.search, vectors)

    def search(self, vectors: np.ndarray) -> Found:
        t0 = time.perf_counter()
        try:
            found = self.db.read(lambda conn: nearest(conn, self.model_id, vectors, self.top_k))
        except sa.exc.OperationalError as exc:
            # PostgreSQL down: the cache is skipped and the classifier answers, so a
            # database outage costs cache hits, never answers.
            log.warning("vector cache skipped, PostgreSQL unreachable: %s",
                        str(exc.orig or exc).strip().splitlines()[0])
            found = [[] for _ in range(len(vectors))]
        return found, (time.perf_counter() - t0) * 1000

"""Keep a worker's in-memory vectors and track records equal to PostgreSQL.

One thread per worker LISTENs on the channels that migration 0005's triggers notify after
each commit touching ``ticket_embeddings`` or ``cache_track_record``, and re-reads just the
named tickets. LISTEN comes before the full load, so nothing committed in between is missed;
after a lost connection the thread reconnects and reloads everything, since notifications
sent while it was away are gone. So feedback reaches every worker's cache, and an erased
ticket leaves it, within milliseconds of the commit while PostgreSQL is up.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import psycopg
import sqlalchemy as sa
from pgvector.psycopg import register_vector

from cca.memory_index import MemoryIndex
from cca.store.database import Database
from cca.tickets import Neighbour

log = logging.getLogger(__name__)

VECTORS, TRACK_RECORD, MARKER = "cca_vectors", "cca_track_record", "cca_vectors_marker"
APPLICATION_NAME = "cca-vector-feed"  # how its connection shows in pg_stat_activity
# More tickets than this in one round of notifications: one full reload is cheaper.
_RELOAD_OVER = 2000
_LABELLED = ("SELECT ticket_id, label, embedding FROM ticket_embeddings "
             "WHERE model_id = %s AND label IS NOT NULL")


class VectorFeed:
    """The in-memory copy of ``model_id``'s labelled vectors, and the thread that feeds it.

    ``search`` returns None while the copy cannot be used (not loaded yet, or more vectors
    than ``max_vectors``): the caller then asks pgvector.
    """

    def __init__(self, db: Database, model_id: str, dim: int, max_vectors: int,
                 on_track_record: Callable[[], None] | None = None,
                 retry_s: float = 1.0) -> None:
        self.db = db
        self._conninfo = db.url.set(drivername="postgresql").render_as_string(
            hide_password=False)
        self.index = MemoryIndex(model_id, dim)
        self.max_vectors = max_vectors
        self.retry_s = retry_s
        self._listeners: list[Callable[[], None]] = [on_track_record] if on_track_record else []
        self.usable = False  # loaded and within max_vectors
        self.connected = False
        self.reloads = 0
        self._markers: dict[str, threading.Event] = {}
        self._loaded = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vector-feed", daemon=True)

    def on_track_record(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def start(self, timeout_s: float = 60.0) -> bool:
        """Start the thread and wait for the first load; whether the copy is in use.

        A copy that never hears of changes would serve erased tickets, so the first load is
        followed by a test notification: if it does not come back (LISTEN does not work
        through a transaction-pooling proxy such as PgBouncer's), the copy is switched off.
        """
        self._thread.start()
        self._loaded.wait(timeout_s)
        if self.usable and not self.catch_up(timeout_s=5.0):
            log.error("a test notification did not come back from PostgreSQL in 5 s (behind a "
                      "transaction-pooling proxy?): the vector cache searches pgvector")
            self.close()
            self.usable = False
        return self.usable

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def status(self) -> dict[str, Any]:
        """For the service's /status."""
        return {"in_memory": self.usable, "searches": "memory" if self.usable else "pgvector",
                "vectors": len(self.index), "following_changes": self.connected,
                "full_loads": self.reloads, "max_vectors": self.max_vectors}

    def search(self, queries: np.ndarray, k: int) -> list[list[Neighbour]] | None:
        return self.index.search(queries, k) if self.usable else None

    def forget(self, ticket_ids: list[str]) -> int:
        """Drop tickets at once (this worker's own erasure), before the notification comes."""
        return self.index.remove(ticket_ids)

    def catch_up(self, timeout_s: float = 5.0) -> bool:
        """Wait until every change committed before this call is in the copy.

        Sends a marker notification: one listener gets notifications in commit order, so once
        the marker has come back (and its round of changes is applied), so has every earlier
        change. For this worker's own feedback, whose next request must see it.
        """
        if not (self.usable and self.connected):
            return False
        token, done = uuid.uuid4().hex, threading.Event()
        self._markers[token] = done
        try:
            self.db.read(lambda conn: conn.exec_driver_sql(
                "SELECT pg_notify(%(c)s, %(t)s)", {"c": MARKER, "t": token}))
            return done.wait(timeout_s)
        except sa.exc.DBAPIError:
            return False
        finally:
            self._markers.pop(token, None)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True,
                                     application_name=APPLICATION_NAME) as conn:
                    register_vector(conn)
                    conn.execute(f"LISTEN {VECTORS}")
                    conn.execute(f"LISTEN {TRACK_RECORD}")
                    conn.execute(f"LISTEN {MARKER}")
                    self._reload(conn)
                    self._notify_track_record()
                    self.connected = True
                    self._loaded.set()
                    self._follow(conn)
            except psycopg.Error as exc:
                if self.connected:
                    log.warning("vector feed lost PostgreSQL (%s); the in-memory cache keeps its "
                                "last copy and reloads on reconnect",
                                str(exc).strip().splitlines()[0] if str(exc) else exc)
            except Exception:
                # A bug must not leave a stale copy in use: pgvector answers until a reload.
                log.exception("vector feed failed; the vector cache searches pgvector")
                self.usable = False
            self.connected = False
            self._loaded.set()  # start() stops waiting
            self._stop.wait(self.retry_s)

    def _follow(self, conn: psycopg.Connection) -> None:
        while not self._stop.is_set():
            # Wait for one notification, then take whatever else is already queued, so a
            # bulk re-index (one notification per statement) becomes one round of reads.
            first = list(conn.notifies(timeout=0.25, stop_after=1))
            if not first:
                continue
            batch = first + list(conn.notifies(timeout=0.005))
            ids: set[str] = set()
            markers: list[str] = []
            reload_all = track_record = False
            for note in batch:
                if note.channel == TRACK_RECORD:
                    track_record = True
                elif note.channel == MARKER:
                    markers.append(note.payload)
                elif note.payload == "*":
                    reload_all = True
                else:
                    ids.update(json.loads(note.payload))
            # Past max_vectors the copy is off (pgvector answers) until a full reload finds
            # the table small enough again.
            if reload_all or (self.usable and len(ids) > _RELOAD_OVER):
                self._reload(conn)
            elif ids and self.usable:
                self._refresh(conn, sorted(ids))
            if track_record:
                self._notify_track_record()
            for token in markers:
                done = self._markers.get(token)
                if done is not None:
                    done.set()

    def _reload(self, conn: psycopg.Connection) -> None:
        model = self.index.model_id
        count = conn.execute("SELECT count(*) FROM ticket_embeddings WHERE model_id = %s "
                             "AND label IS NOT NULL", (model,)).fetchone()
        n = int(count[0]) if count else 0
        if n > self.max_vectors:
            if self.usable or self.reloads == 0:
                log.warning("%d labelled vectors exceed CCA_CACHE_MEMORY_MAX_VECTORS (%d): the "
                            "vector cache searches pgvector", n, self.max_vectors)
            self.usable = False
            self.index.replace([])
        else:
            rows = conn.execute(_LABELLED, (model,))
            self.index.replace((tid, label, _array(v)) for tid, label, v in rows)
            self.usable = True
        self.reloads += 1

    def _refresh(self, conn: psycopg.Connection, ids: list[str]) -> None:
        rows = conn.execute(_LABELLED + " AND ticket_id = ANY(%s)",
                            (self.index.model_id, ids)).fetchall()
        found = {tid for tid, _, _ in rows}
        self.index.remove(i for i in ids if i not in found)
        for tid, label, vector in rows:
            self.index.upsert(tid, label, _array(vector))
        if len(self.index) > self.max_vectors:
            self._reload(conn)  # grew past the limit: back to pgvector

    def _notify_track_record(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:  # a failed refresh keeps the last records; the next one retries
                log.exception("track record refresh failed")


def _array(value: object) -> np.ndarray:
    """pgvector's type, or an array already (a column typed vector(n) comes as one)."""
    to_numpy = getattr(value, "to_numpy", None)
    return to_numpy() if to_numpy is not None else np.asarray(value, dtype=np.float32)

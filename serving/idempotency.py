"""Idempotent classification: the same ticket id with the same content gets the same decision.

Redis holds the recent decisions (one key per ticket id, so deletion by id is one DEL);
PostgreSQL, written by the audit flusher, is the durable record behind it. Neither being down
may fail a request: classifying a ticket again is safe (the audit records both), so every
failure here degrades to "not seen before".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from serving.redis_guard import RedisGuard, RedisUnavailable

log = logging.getLogger("cca.serving.idempotency")

# (ticket id, request hash) pairs -> the stored decision of each, or None
DbLookup = Callable[[list[tuple[str, str]]], "list[dict | None]"]

_FORGET_CHUNK = 1000


class IdempotencyStore:
    """Decisions by (ticket id, request hash): Redis first, then ``db_lookup``.

    Counters for metrics: ``redis_up``, ``hits_redis``, ``hits_db``, ``misses``,
    ``db_errors``, ``puts_skipped``.
    """

    def __init__(
        self,
        redis_url: str,
        ttl_s: int,
        db_lookup: DbLookup,
        prefix: str = "cca:idem:",
        *,
        connect_timeout_s: float = 0.05,
        read_timeout_s: float = 0.1,
        cooldown_s: float = 1.5,
    ) -> None:
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be >= 1, got {ttl_s}")
        self.ttl_s = int(ttl_s)
        self.prefix = prefix
        self._db_lookup = db_lookup
        self._guard = RedisGuard(
            redis_url, name="idempotency store", fallback="reading PostgreSQL only",
            connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s,
            cooldown_s=cooldown_s, logger=log,
        )
        self._lock = threading.Lock()
        # key -> encoded entry accepted by put_many(wait=False) and not yet sent to Redis
        self._inflight: dict[str, str] = {}
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cca-idem-put")
        self._db_up = True
        self.hits_redis = 0
        self.hits_db = 0
        self.misses = 0
        self.db_errors = 0
        self.puts_skipped = 0

    @property
    def redis_up(self) -> bool:
        return self._guard.up

    def key(self, ticket_id: str) -> str:
        """Ids are arbitrary text up to 200 chars: hash them into a fixed, safe key."""
        digest = hashlib.sha256(ticket_id.encode("utf-8", "surrogatepass")).hexdigest()
        return self.prefix + digest

    # -- reads -----------------------------------------------------------------------------

    def get(self, ticket_id: str, request_hash: str) -> dict | None:
        """The earlier decision for this id and content, or None (never raises)."""
        return self.get_many([(ticket_id, request_hash)])[0]

    def get_many(self, items: list[tuple[str, str]]) -> list[dict | None]:
        """One MGET for the batch; misses go to ``db_lookup`` and DB hits re-warm Redis."""
        out, misses = self.get_cached(items)
        if misses:
            self.fill_from_db(items, misses, out)
        return out

    def get_cached(self, items: list[tuple[str, str]]) -> tuple[list[dict | None], list[int]]:
        """Decisions from this process' unsent writes and one Redis MGET, and the indices of
        the misses (for ``fill_from_db``, which the service runs while it classifies them)."""
        if not items:
            return [], []
        keys = [self.key(tid) for tid, _ in items]
        try:
            raws = self._guard.run(lambda r: r.mget(keys))
        except RedisUnavailable:
            raws = [None] * len(items)
        out: list[dict | None] = []
        redis_hits = 0
        misses: list[int] = []
        with self._lock:
            inflight = [self._inflight.get(k) for k in keys] if self._inflight else None
        for i, ((_, h), raw) in enumerate(zip(items, raws, strict=True)):
            decision = self._decode(inflight[i] if inflight and inflight[i] else raw, h)
            if decision is None:
                misses.append(i)
            else:
                redis_hits += 1
            out.append(decision)
        with self._lock:
            self.hits_redis += redis_hits
        return out, misses

    def _decode(self, raw: bytes | str | None, request_hash: str) -> dict | None:
        if raw is None:
            return None
        try:
            entry = json.loads(raw)
            stored_hash, decision = entry["h"], entry["d"]
        except (ValueError, TypeError, KeyError):
            log.warning("idempotency: unreadable entry for a ticket id, ignoring it")
            return None
        # A different hash means the id came back with other content: not a replay. (The DB
        # may still hold this exact content from an earlier round, so it is asked next.)
        return decision if stored_hash == request_hash else None

    def fill_from_db(self, items: list[tuple[str, str]], misses: list[int],
                     out: list[dict | None]) -> None:
        """Fill ``out[i]`` for the ``misses`` that PostgreSQL knows (one query), re-warming
        Redis with them."""
        keys = {i: self.key(items[i][0]) for i in misses}
        warm: list[tuple[str, str]] = []
        db_hits = db_errors = 0
        try:
            found = self._db_lookup([items[i] for i in misses])  # one query for the batch
        except Exception as exc:  # any DB failure means "not seen before"
            db_errors += 1
            self._db_failed(exc)
            found = [None] * len(misses)
        else:
            self._db_ok()
        for i, decision in zip(misses, found, strict=True):
            if decision is not None:
                out[i] = decision
                db_hits += 1
                warm.append((keys[i], self._encode(items[i][1], decision)))
        with self._lock:
            self.hits_db += db_hits
            self.db_errors += db_errors
            self.misses += len(misses) - db_hits
        if warm:
            self._warm(warm)

    def _warm(self, entries: list[tuple[str, str]]) -> None:
        # NX: never replace a newer decision (another content) that Redis already holds.
        def op(r):
            pipe = r.pipeline(transaction=False)
            for key, value in entries:
                pipe.set(key, value, ex=self.ttl_s, nx=True)
            return pipe.execute()

        with contextlib.suppress(RedisUnavailable):
            self._guard.run(op)

    def _db_failed(self, exc: Exception) -> None:
        with self._lock:
            first, self._db_up = self._db_up, False
        if first:
            log.warning("idempotency: db_lookup failed (%s: %s); treating tickets as new",
                        type(exc).__name__, exc)

    def _db_ok(self) -> None:
        if not self._db_up:
            with self._lock:
                self._db_up = True
            log.info("idempotency: db_lookup works again")

    # -- writes ----------------------------------------------------------------------------

    @staticmethod
    def _encode(request_hash: str, decision: dict) -> str:
        return json.dumps({"h": request_hash, "d": decision}, separators=(",", ":"),
                          ensure_ascii=False)

    def put(self, ticket_id: str, request_hash: str, decision: dict) -> None:
        """Remember a decision in Redis for ``ttl_s``; skipped (never raises) if Redis is down."""
        self.put_many([(ticket_id, request_hash, decision)])

    def put_many(self, items: list[tuple[str, str, dict]], *, wait: bool = True) -> None:
        """One pipelined round trip for the batch; skipped if Redis is down.

        ``wait=False`` sends it from a background thread (in order), so the request path does
        not wait on Redis; until it is sent, this process' reads see the entries anyway.
        """
        if not items:
            return
        entries = [(self.key(tid), self._encode(h, d)) for tid, h, d in items]
        if wait:
            self._send(entries)
            return
        with self._lock:
            self._inflight.update(entries)
        self._writer.submit(self._send, entries, True)

    def _send(self, entries: list[tuple[str, str]], release: bool = False) -> None:
        def op(r):
            pipe = r.pipeline(transaction=False)
            for key, value in entries:
                pipe.set(key, value, ex=self.ttl_s)
            return pipe.execute()

        try:
            self._guard.run(op)
        except RedisUnavailable:
            with self._lock:
                self.puts_skipped += len(entries)
        finally:
            if release:
                with self._lock:
                    for key, value in entries:
                        if self._inflight.get(key) == value:  # not replaced by a newer one
                            del self._inflight[key]

    def forget(self, ticket_ids: list[str]) -> int:
        """Right to deletion: drop these ids' entries; returns how many existed.

        Unlike the request path this tries Redis even while the breaker is open and raises
        :class:`RedisUnavailable` on failure: a deletion must not be silently skipped.
        """
        keys = list(dict.fromkeys(self.key(tid) for tid in ticket_ids))
        if not keys:
            return 0

        def op(r):
            pipe = r.pipeline(transaction=False)
            for start in range(0, len(keys), _FORGET_CHUNK):
                pipe.delete(*keys[start:start + _FORGET_CHUNK])
            return pipe.execute()

        return int(sum(self._guard.run(op, force=True)))

    def stats(self) -> dict[str, float]:
        return {
            "redis_up": float(self.redis_up),
            "hits_redis": self.hits_redis,
            "hits_db": self.hits_db,
            "misses": self.misses,
            "db_errors": self.db_errors,
            "puts_skipped": self.puts_skipped,
            "redis_outages": self._guard.outages,
        }

    def close(self) -> None:
        self._writer.shutdown(wait=True)  # what was accepted is sent (or counted skipped)
        self._guard.close()

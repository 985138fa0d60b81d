"""Near-duplicate tickets: MinHash LSH over character shingles of the redacted text.

Signatures are stored in PostgreSQL (the durable record); the LSH index lives in Redis so
every batch is checked against all history without loading it. If Redis lost the index
(it keeps nothing on disk here) it is rebuilt from PostgreSQL before the batch runs.
A duplicate is linked to its original (``tickets.duplicate_of``), never deleted; it is left
out of training and the vector index so one ticket does not count twice.
"""

from __future__ import annotations

import pickle
import re
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import redis
import sqlalchemy as sa
from datasketch import MinHash, MinHashLSH
from sqlalchemy.engine import Connection

from cca.errors import StateError
from cca.settings import Settings
from cca.store import Database

Progress = Callable[[int], None]
_WS = re.compile(r"\s+")


@dataclass
class DedupReport:
    checked: int = 0
    duplicates: int = 0
    originals: int = 0
    label_conflicts: int = 0
    rebuilt_index: bool = False
    examples: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def shingles(text: str, k: int) -> set[bytes]:
    norm = _WS.sub(" ", text.lower()).strip()
    if len(norm) <= k:
        return {norm.encode("utf-8")}
    return {norm[i : i + k].encode("utf-8") for i in range(len(norm) - k + 1)}


# Pinned so stored signatures stay comparable across datasketch upgrades.
SCHEME = "affine32"


def signature(text: str, num_perm: int, k: int) -> MinHash:
    m = MinHash(num_perm=num_perm, seed=1, scheme=SCHEME)
    m.update_batch(list(shingles(text, k)))
    return m


def _from_bytes(raw: bytes, num_perm: int) -> MinHash:
    return MinHash(num_perm=num_perm, seed=1, scheme=SCHEME,
                   hashvalues=np.frombuffer(raw, dtype=np.uint32).copy())


class NearDuplicateIndex:
    """The Redis LSH index for one database and one set of MinHash parameters."""

    def __init__(self, settings: Settings, namespace: str) -> None:
        self.num_perm = settings.dedup_num_perm
        self.k = settings.dedup_shingle_chars
        self.threshold = settings.dedup_threshold
        # Signatures depend on the MinHash parameters only; the LSH bands also on the
        # threshold, so a new threshold gets a new (empty) Redis index, rebuilt below.
        self.params = f"{SCHEME}-p{self.num_perm}-k{self.k}"
        self.basename = f"cca:lsh:{namespace}:{self.params}-t{self.threshold}"
        self.redis = redis.Redis.from_url(settings.redis_url)
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise StateError(f"Redis at {settings.redis_url} is unreachable ({exc}); "
                             "near-duplicate check not run, nothing changed") from exc
        # datasketch opens its own client from keyword arguments: hand it everything the URL
        # said (credentials, TLS, a unix socket), not just host and port.
        conn_kw = self.redis.connection_pool.connection_kwargs
        wanted = ("host", "port", "db", "username", "password", "path", "ssl_cert_reqs",
                  "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
        config = {k: conn_kw[k] for k in wanted if conn_kw.get(k) is not None}
        if "path" in config:
            config["unix_socket_path"] = config.pop("path")
        if settings.redis_url.startswith("rediss://"):
            config["ssl"] = True
        self.lsh = MinHashLSH(
            threshold=self.threshold, num_perm=self.num_perm,
            storage_config={"type": "redis", "basename": self.basename.encode(),
                            "redis": config},
        )

    def size(self) -> int:
        return self.lsh.keys.size()

    def rebuild(self, conn: Connection) -> None:
        for key in self.redis.scan_iter(match=f"{self.basename}_*", count=1000):
            self.redis.delete(key)
        rows = conn.execute(
            sa.text("SELECT m.ticket_id, m.signature FROM ticket_minhash m "
                    "JOIN tickets t ON t.id = m.ticket_id "
                    "WHERE m.params = :p AND t.duplicate_of IS NULL"),
            {"p": self.params},
        ).all()
        with self.lsh.insertion_session(buffer_size=5000) as session:
            for tid, raw in rows:
                session.insert(tid, _from_bytes(bytes(raw), self.num_perm), check_duplication=False)

    def in_sync(self, conn: Connection) -> bool:
        stored = conn.execute(
            sa.text("SELECT count(*) FROM ticket_minhash m JOIN tickets t ON t.id = m.ticket_id "
                    "WHERE m.params = :p AND t.duplicate_of IS NULL"),
            {"p": self.params},
        ).scalar()
        return int(stored or 0) == self.size()


def _namespace(conn: Connection) -> str:
    """A random id stored in the database, so two databases never share Redis keys."""
    conn.execute(sa.text("INSERT INTO ingest_cursors (connector, cursor) "
                         "VALUES ('dedup:namespace', :v) ON CONFLICT DO NOTHING"),
                 {"v": uuid.uuid4().hex[:12]})
    return conn.execute(sa.text("SELECT cursor FROM ingest_cursors "
                                "WHERE connector = 'dedup:namespace'")).scalar_one()


def forget_near_duplicates(db: Database, settings: Settings, ticket_ids: list[str]) -> int:
    """Drop erased tickets from the Redis index; how many it held. Raises when Redis is down."""
    if not ticket_ids:
        return 0
    with db.begin() as conn:
        index = NearDuplicateIndex(settings, _namespace(conn))
    removed = 0
    for tid in ticket_ids:
        if tid in index.lsh:
            index.lsh.remove(tid)
            removed += 1
    return removed


_PENDING = sa.text(
    """
    SELECT t.id, t.clean_subject, t.clean_body, t.clean_hash, l.label,
           m.ticket_id IS NOT NULL AS had_signature
    FROM tickets t
    LEFT JOIN ticket_labels l ON l.ticket_id = t.id AND l.validated
    LEFT JOIN ticket_minhash m ON m.ticket_id = t.id
    WHERE t.sanitized_for = t.content_hash
      AND (t.dedup_for IS DISTINCT FROM t.clean_hash
           OR m.params IS DISTINCT FROM :params)  -- new MinHash parameters: sign again
    ORDER BY t.created_at, t.id
    """
)


def dedup_pending(db: Database, settings: Settings, batch_size: int = 2000,
                  on_total: Callable[[int], None] | None = None,
                  progress: Progress | None = None) -> DedupReport:
    """Check every redacted ticket not yet checked (or changed since) against all history."""
    report = DedupReport()
    with db.begin() as conn:
        index = NearDuplicateIndex(settings, _namespace(conn))
        if not index.in_sync(conn):
            index.rebuild(conn)
            report.rebuilt_index = True
        pending = conn.execute(_PENDING, {"params": index.params}).mappings().all()
    if on_total:
        on_total(len(pending))
    for _ in range(3):  # a changed original sends its duplicates round once more
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            _dedup_chunk(db, index, chunk, report)
            if progress:
                progress(len(chunk))
        with db.begin() as conn:
            pending = conn.execute(_PENDING, {"params": index.params}).mappings().all()
        if not pending:
            break
    return report


def _history_candidates(index: NearDuplicateIndex, sigs: list[MinHash]) -> list[set[str]]:
    """Candidates from Redis for a whole chunk: one pipelined round trip per LSH band.

    (``MinHashLSH.query`` costs a round trip per band per ticket; ``_H`` is datasketch's own
    band-key function, so keys match the ones its inserts wrote.)
    """
    lsh = index.lsh
    found: list[set[str]] = [set() for _ in sigs]
    for (start, end), table in zip(lsh.hashranges, lsh.hashtables, strict=True):
        keys = [lsh._H(sig.hashvalues[start:end]) for sig in sigs]
        for i, hits in enumerate(table.getmany(*keys)):
            found[i].update(pickle.loads(h) for h in hits)
    return found


def _dedup_chunk(db: Database, index: NearDuplicateIndex, chunk: list, report: DedupReport
                 ) -> None:
    ids = [r["id"] for r in chunk]
    sigs = [signature(f"{r['clean_subject'] or ''}\n{r['clean_body'] or ''}", index.num_perm,
                      index.k) for r in chunk]
    changed = [row["id"] for row in chunk if row["had_signature"]]
    for tid in changed:
        if tid in index.lsh:
            index.lsh.remove(tid)  # its text changed: check it afresh
    history = _history_candidates(index, sigs)
    local = MinHashLSH(threshold=index.threshold, num_perm=index.num_perm)  # this chunk
    known: dict[str, tuple[MinHash, str | None]] = {}
    links: list[dict] = []
    originals: list[tuple[str, MinHash]] = []
    with db.begin() as conn:
        wanted = sorted(set().union(*history) - set(ids)) if history else []
        for cid, raw, label in conn.execute(
            sa.text("SELECT m.ticket_id, m.signature, l.label FROM ticket_minhash m "
                    "LEFT JOIN ticket_labels l ON l.ticket_id = m.ticket_id AND l.validated "
                    "WHERE m.ticket_id = ANY(:ids)"),
            {"ids": wanted},
        ):
            known[cid] = (_from_bytes(bytes(raw), index.num_perm), label)
        for row, sig, found in zip(chunk, sigs, history, strict=True):
            tid = row["id"]
            candidates = (found | set(local.query(sig))) - {tid}
            best = max(((sig.jaccard(known[c][0]), c) for c in candidates if c in known),
                       default=(0.0, None))
            original = best[1] if best[0] >= index.threshold else None
            report.checked += 1
            if original is None:
                report.originals += 1
                local.insert(tid, sig, check_duplication=False)
                originals.append((tid, sig))
            else:
                report.duplicates += 1
                conflict = row["label"] is not None and known[original][1] not in (
                    None, row["label"])
                report.label_conflicts += int(conflict)
                if len(report.examples) < 5:
                    report.examples.append({"ticket": tid, "original": original,
                                            "jaccard": round(best[0], 3),
                                            "label_conflict": conflict})
            known[tid] = (sig, row["label"])
            links.append({"id": tid, "dup": original, "h": row["clean_hash"],
                          "sig": sig.hashvalues.astype(np.uint32).tobytes(), "p": index.params})
        conn.execute(
            sa.text("INSERT INTO ticket_minhash (ticket_id, params, clean_hash, signature) "
                    "VALUES (:id, :p, :h, :sig) ON CONFLICT (ticket_id) DO UPDATE SET "
                    "params = EXCLUDED.params, clean_hash = EXCLUDED.clean_hash, "
                    "signature = EXCLUDED.signature, created_at = now()"),
            links,
        )
        conn.execute(
            sa.text("UPDATE tickets SET duplicate_of = :dup, dedup_for = :h WHERE id = :id"),
            links,
        )
        if changed:  # what was linked to a changed ticket may no longer be a duplicate of it
            conn.execute(sa.text("UPDATE tickets SET dedup_for = NULL "
                                 "WHERE duplicate_of = ANY(:ids) AND NOT id = ANY(:chunk)"),
                         {"ids": changed, "chunk": ids})
        # Redis last: if this fails the transaction rolls back, and a Redis index that ran
        # ahead of PostgreSQL is caught by the size check and rebuilt on the next run.
        with index.lsh.insertion_session(buffer_size=5000) as session:
            for tid, sig in originals:
                session.insert(tid, sig, check_duplication=False)

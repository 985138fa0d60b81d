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
from dataclasses import asdict, dataclass, field

import numpy as np
import redis
from datasketch import MinHash, MinHashLSH
from sqlalchemy.engine import Connection

from cca.errors import StateError
from cca.settings import Settings
from cca.store import Database, dedup_repo
from cca.store.dedup_repo import DedupLink, PendingTicket
from pipelines.progress import Progress

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

    def forget(self, ticket_ids: list[str]) -> int:
        """Take these tickets out of the index; how many it held."""
        held = [tid for tid in ticket_ids if tid in self.lsh]
        for tid in held:
            self.lsh.remove(tid)
        return len(held)

    def size(self) -> int:
        return self.lsh.keys.size()

    def rebuild(self, conn: Connection) -> None:
        for key in self.redis.scan_iter(match=f"{self.basename}_*", count=1000):
            self.redis.delete(key)
        rows = dedup_repo.original_signatures(conn, self.params)
        with self.lsh.insertion_session(buffer_size=5000) as session:
            for tid, raw in rows:
                session.insert(tid, _from_bytes(raw, self.num_perm), check_duplication=False)

    def in_sync(self, conn: Connection) -> bool:
        return dedup_repo.count_original_signatures(conn, self.params) == self.size()


def forget_near_duplicates(conn: Connection, settings: Settings, ticket_ids: list[str]) -> int:
    """Drop erased tickets from the Redis index; how many it held. Run inside the erasure's
    transaction (``conn``), so that Redis being down (``StateError``, or ``redis.RedisError``
    if it goes down half way) rolls the erasure back instead of leaving the index behind."""
    if not ticket_ids:
        return 0
    index = NearDuplicateIndex(settings, dedup_repo.namespace(conn))
    return index.forget(ticket_ids)


def dedup_pending(db: Database, settings: Settings, batch_size: int = 2000,
                  progress: Progress | None = None) -> DedupReport:
    """Check every redacted ticket not yet checked (or changed since) against all history."""
    report = DedupReport()
    with db.begin() as conn:
        index = NearDuplicateIndex(settings, dedup_repo.namespace(conn))
        if not index.in_sync(conn):
            index.rebuild(conn)
            report.rebuilt_index = True
        pending = dedup_repo.pending(conn, index.params)
    if progress:
        progress.set_total(len(pending))
    for _ in range(3):  # a changed original sends its duplicates round once more
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            _dedup_chunk(db, index, chunk, report)
            if progress:
                progress(len(chunk))
        with db.begin() as conn:
            pending = dedup_repo.pending(conn, index.params)
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


def _dedup_chunk(db: Database, index: NearDuplicateIndex, chunk: list[PendingTicket],
                 report: DedupReport) -> None:
    """Check one chunk against history and against itself; links, signatures and the Redis
    index move together."""
    ids = [r.id for r in chunk]
    sigs = [signature(f"{r.clean_subject or ''}\n{r.clean_body or ''}", index.num_perm,
                      index.k) for r in chunk]
    changed = [row.id for row in chunk if row.had_signature]
    index.forget(changed)  # their text changed: check them afresh
    history = _history_candidates(index, sigs)
    with db.begin() as conn:
        wanted = sorted(set().union(*history) - set(ids)) if history else []
        known = {k.ticket_id: (_from_bytes(k.signature, index.num_perm), k.label)
                 for k in dedup_repo.known_signatures(conn, wanted)}
        links, originals = _link(index, list(zip(chunk, sigs, history, strict=True)), known,
                                 report)
        dedup_repo.save_links(conn, links)
        if changed:  # what was linked to a changed ticket may no longer be a duplicate of it
            dedup_repo.recheck_duplicates_of(conn, changed, ids)
        # Redis last: if this fails the transaction rolls back, and a Redis index that ran
        # ahead of PostgreSQL is caught by the size check and rebuilt on the next run.
        with index.lsh.insertion_session(buffer_size=5000) as session:
            for tid, sig in originals:
                session.insert(tid, sig, check_duplication=False)


Known = dict[str, tuple[MinHash, str | None]]  # ticket id -> (signature, validated label)


def _link(index: NearDuplicateIndex, items: list[tuple[PendingTicket, MinHash, set[str]]],
          known: Known, report: DedupReport) -> tuple[list[DedupLink], list[tuple[str, MinHash]]]:
    """Each ticket's original among its candidates (history, and earlier tickets of this
    chunk), if one is similar enough; (links to store, the new originals for Redis)."""
    local = MinHashLSH(threshold=index.threshold, num_perm=index.num_perm)  # this chunk
    links: list[DedupLink] = []
    originals: list[tuple[str, MinHash]] = []
    for row, sig, found in items:
        tid = row.id
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
            _count_duplicate(report, row, original, best[0], known)
        known[tid] = (sig, row.label)
        links.append(DedupLink(ticket_id=tid, duplicate_of=original, clean_hash=row.clean_hash,
                               signature=sig.hashvalues.astype(np.uint32).tobytes(),
                               params=index.params))
    return links, originals


def _count_duplicate(report: DedupReport, row: PendingTicket, original: str, jaccard: float,
                     known: Known) -> None:
    report.duplicates += 1
    conflict = row.label is not None and known[original][1] not in (None, row.label)
    report.label_conflicts += int(conflict)
    if len(report.examples) < 5:
        report.examples.append({"ticket": row.id, "original": original,
                                "jaccard": round(jaccard, 3), "label_conflict": conflict})

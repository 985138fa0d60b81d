"""Walk every store a home has for a customer's traces: the database catalogue, the whole
Redis keyspace, the files under CCA_HOME and a worker's in-memory vectors.

Nothing is listed by hand: tables and columns come from ``information_schema`` when the walk
runs, Redis keys from ``SCAN``, files from the directory tree, so a table, key or file added
later is walked too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import redis
import sqlalchemy as sa

from cca.store import Database

# Column types that can hold text (arrays of text too: writebacks.tags).
TEXT_TYPES = ("text", "character varying", "character", "json", "jsonb", "ARRAY")
# PostgreSQL's own files hold deleted rows until VACUUM; the catalogue walk reads what the
# database serves instead.
SKIPPED_DIRS = ("pg",)


@dataclass(frozen=True)
class Traces:
    """What identifies one customer: reference digits, ticket ids and canary phrases."""

    ref_core: str
    ticket_ids: frozenset[str]
    canaries: frozenset[str]

    @property
    def needles(self) -> list[str]:
        """Lower-cased strings none of which may remain; the ids' sha256 too (the replay
        store keys its entries by it)."""
        digests = {hashlib.sha256(t.encode()).hexdigest() for t in self.ticket_ids}
        return sorted({self.ref_core.lower(), *(t.lower() for t in self.ticket_ids),
                       *(c.lower() for c in self.canaries), *digests})


@dataclass
class Found:
    """Where needles were found: ``(store, place, needle)``; ``columns`` walked."""

    hits: list[tuple[str, str, str]] = field(default_factory=list)
    tables: int = 0

    def places(self) -> set[str]:
        return {place for _, place, _ in self.hits}


def database(db: Database, traces: Traces) -> Found:
    """Every text-like column of every table outside PostgreSQL's own schemas."""
    found = Found()
    needles = traces.needles
    with db.begin() as conn:
        columns = conn.execute(sa.text(
            "SELECT c.table_schema, c.table_name, c.column_name FROM information_schema.columns c "
            "JOIN information_schema.tables t ON t.table_schema = c.table_schema "
            " AND t.table_name = c.table_name "
            "WHERE t.table_type = 'BASE TABLE' "
            "AND c.table_schema NOT IN ('pg_catalog', 'information_schema') "
            "AND c.table_schema NOT LIKE 'pg\\_%' AND c.data_type = ANY(:types) "
            "ORDER BY 1, 2, 3"), {"types": list(TEXT_TYPES)}).all()
        found.tables = len({(s, t) for s, t, _ in columns})
        for schema, table, column in columns:
            q = conn.dialect.identifier_preparer.quote
            rows = conn.execute(sa.text(
                f"SELECT n, {q(column)}::text AS v FROM {q(schema)}.{q(table)}, "
                "unnest(CAST(:n AS text[])) n "
                f"WHERE strpos(lower({q(column)}::text), n) > 0"), {"n": needles}).all()
            found.hits += [("postgres", f"{schema}.{table}.{column}={v}", n) for n, v in rows]
    return found


def redis_keyspace(client: redis.Redis, traces: Traces) -> Found:
    """Every key of the database ``client`` is on, its name and whole value."""
    found = Found()
    needles = [n.encode() for n in traces.needles]
    for key in client.scan_iter(count=1000):
        blob = b"\n".join([key, *_values(client, key)]).lower()
        found.hits += [("redis", repr(key), n.decode()) for n in needles if n in blob]
    return found


def _values(client: redis.Redis, key: bytes) -> list[bytes]:
    kind = client.type(key).decode()
    if kind == "string":
        return [client.get(key) or b""]
    if kind == "hash":
        return [b for kv in client.hgetall(key).items() for b in kv]
    if kind == "list":
        return client.lrange(key, 0, -1)
    if kind == "set":
        return list(client.smembers(key))
    if kind == "zset":
        return [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
    if kind == "stream":
        return [repr(e).encode() for e in client.xrange(key)]
    return []  # vanished between SCAN and TYPE


def files(home: Path, traces: Traces) -> Found:
    """Every file under the home (inbox, spool, reports, Data Docs, MLflow artifacts,
    models…), read whole as bytes so text inside binary formats is found too."""
    found = Found()
    needles = [n.encode() for n in traces.needles]
    for path in sorted(home.rglob("*")):
        rel = path.relative_to(home)
        if rel.parts[0] in SKIPPED_DIRS or not path.is_file():
            continue
        try:
            blob = path.read_bytes().lower()
        except OSError:
            continue  # removed while walking (a spool segment delivered)
        found.hits += [("file", str(rel), n.decode()) for n in needles if n in blob]
    return found


def vectors(engine: object, traces: Traces) -> Found:
    """The worker's in-memory copy of the labelled vectors."""
    found = Found()
    feed = engine.vector_feed  # type: ignore[attr-defined]
    if feed is not None:
        found.hits += [("memory", tid, tid) for tid in traces.ticket_ids if tid in feed.index]
    return found

"""Labelled ticket vectors in pgvector and the per-label track record of cache reuses.

Each embedding model gets a partial HNSW index on ``embedding::vector(dim)`` so vectors of
different models and sizes share one table without mixing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cca.errors import ConfigError
from cca.store.tickets_repo import COUNTS_AS_ORIGINAL
from cca.tickets import Neighbour

_SAFE_MODEL_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,120}$")


@dataclass(frozen=True)
class VectorRow:
    ticket_id: str
    content_hash: str
    label: str | None
    department: str | None
    source: str
    validated: bool
    created_at: datetime


def _model_literal(model_id: str) -> str:
    if not _SAFE_MODEL_ID.match(model_id):
        raise ConfigError(f"embedding model id {model_id!r} has characters not allowed in an index")
    return "'" + model_id + "'"


def _vec(v: np.ndarray) -> str:
    """pgvector's text form; one format string for the row (half the CPU of a generator of
    f-strings, and every cache lookup formats its query vector)."""
    values = v.tolist()
    return "[" + ",".join(["%.6g"] * len(values)) % tuple(values) + "]"


def ensure_index(conn: Connection, model_id: str, dim: int) -> None:
    name = "ix_emb_hnsw_" + hashlib.sha1(f"{model_id}:{dim}".encode()).hexdigest()[:12]
    conn.execute(
        sa.text(
            f"CREATE INDEX IF NOT EXISTS {name} ON ticket_embeddings USING hnsw "
            f"((embedding::vector({dim})) vector_cosine_ops) "
            f"WHERE model_id = {_model_literal(model_id)} AND label IS NOT NULL"
        )
    )


def indexed_hashes(conn: Connection, model_id: str) -> dict[str, str]:
    """Ticket id -> content hash already embedded with this model (to embed only what changed)."""
    rows = conn.execute(
        sa.text("SELECT ticket_id, content_hash FROM ticket_embeddings WHERE model_id = :m"),
        {"m": model_id},
    ).all()
    return dict(rows)


def upsert_vectors(
    conn: Connection, model_id: str, rows: list[VectorRow], vectors: np.ndarray
) -> None:
    conn.execute(
        sa.text(
            """
            INSERT INTO ticket_embeddings (ticket_id, model_id, embedding, content_hash, label,
                                           department, source, validated, created_at)
            VALUES (:ticket_id, :model_id, CAST(:embedding AS vector), :content_hash, :label,
                    :department, :source, :validated, :created_at)
            ON CONFLICT (ticket_id, model_id) DO UPDATE SET
                embedding = EXCLUDED.embedding, content_hash = EXCLUDED.content_hash,
                label = EXCLUDED.label, department = EXCLUDED.department,
                source = EXCLUDED.source, validated = EXCLUDED.validated,
                created_at = EXCLUDED.created_at, indexed_at = now()
            """
        ),
        [
            {
                "ticket_id": r.ticket_id, "model_id": model_id, "embedding": _vec(v),
                "content_hash": r.content_hash, "label": r.label, "department": r.department,
                "source": r.source, "validated": r.validated, "created_at": r.created_at,
            }
            for r, v in zip(rows, vectors, strict=True)
        ],
    )


def drop_counted_out(conn: Connection, model_id: str) -> int:
    """Remove the vectors of tickets found to be counted-out near-duplicates after they were
    indexed (``COUNTS_AS_ORIGINAL``); how many."""
    return conn.execute(
        sa.text("DELETE FROM ticket_embeddings e USING tickets t WHERE e.ticket_id = t.id "
                f"AND e.model_id = :m AND NOT {COUNTS_AS_ORIGINAL}"),
        {"m": model_id},
    ).rowcount


def sync_labels(conn: Connection, model_id: str) -> int:
    """Copy changed labels onto this model's vectors without re-embedding; how many moved."""
    return conn.execute(
        sa.text(
            """
            UPDATE ticket_embeddings e SET label = l.label, department = l.department,
                   validated = l.validated
            FROM ticket_labels l
            WHERE e.ticket_id = l.ticket_id AND e.model_id = :m
              AND (e.label, e.department, e.validated)
                  IS DISTINCT FROM (l.label, l.department, l.validated)
            """
        ),
        {"m": model_id},
    ).rowcount


def delete_created_before(conn: Connection, cutoff: datetime) -> int:
    """Retention: every model's vectors of tickets created before ``cutoff``; how many."""
    return conn.execute(
        sa.text("DELETE FROM ticket_embeddings WHERE created_at < :cut"), {"cut": cutoff}
    ).rowcount


def relabel(conn: Connection, ticket_id: str, label: str, department: str) -> int:
    """A validated label moves into every model's index for that ticket."""
    return conn.execute(
        sa.text(
            "UPDATE ticket_embeddings SET label = :l, department = :d, validated = true "
            "WHERE ticket_id = :t"
        ),
        {"l": label, "d": department, "t": ticket_id},
    ).rowcount


def nearest(
    conn: Connection,
    model_id: str,
    queries: np.ndarray,
    k: int,
    exclude_ids: list[str] | None = None,
) -> list[list[Neighbour]]:
    """Top-k labelled neighbours for each query vector, in one round trip per batch."""
    if len(queries) == 0:
        return []
    dim = queries.shape[1]
    model = _model_literal(model_id)
    exclude = exclude_ids if exclude_ids is not None else [""] * len(queries)
    # The driver's own SQL (exec_driver_sql): SQLAlchemy's text() compilation and parameter
    # processing add CPU on the cascade's thread, once per served batch, for nothing this
    # fixed query needs (docs/ARCHITECTURE.md).
    sql = (
        f"""
        SELECT q.i, n.ticket_id, n.label, n.sim
        FROM unnest(CAST(%(vecs)s AS vector[]), CAST(%(excl)s AS text[]))
             WITH ORDINALITY AS q(v, x, i)
        CROSS JOIN LATERAL (
            SELECT e.ticket_id, e.label,
                   1 - (e.embedding::vector({dim}) <=> q.v::vector({dim})) AS sim
            FROM ticket_embeddings e
            WHERE e.model_id = {model} AND e.label IS NOT NULL AND e.ticket_id <> q.x
            ORDER BY e.embedding::vector({dim}) <=> q.v::vector({dim})
            LIMIT {int(k)}
        ) n
        ORDER BY q.i, n.sim DESC
        """
    )
    out: list[list[Neighbour]] = [[] for _ in range(len(queries))]
    rows = conn.exec_driver_sql(sql, {"vecs": [_vec(q) for q in queries],
                                      "excl": exclude}).all()
    for i, tid, label, sim in rows:
        if sim is None or not np.isfinite(sim):  # a zero vector has no direction: no neighbour
            continue
        out[i - 1].append(Neighbour(ticket_id=tid, label=label, similarity=float(sim)))
    return out


def seed_track_record(
    conn: Connection, model_id: str, seeds: dict[str, tuple[int, int]]
) -> None:
    """Replace the training-time estimate (reuses, confirmed) per label; keep feedback counts."""
    conn.execute(
        sa.text("UPDATE cache_track_record SET seed_reuses = 0, seed_confirmed = 0 "
                "WHERE model_id = :m"),
        {"m": model_id},
    )
    if seeds:
        conn.execute(
            sa.text(
                """
                INSERT INTO cache_track_record (model_id, label, seed_reuses, seed_confirmed)
                VALUES (:m, :l, :r, :c)
                ON CONFLICT (model_id, label) DO UPDATE SET
                    seed_reuses = EXCLUDED.seed_reuses, seed_confirmed = EXCLUDED.seed_confirmed,
                    updated_at = now()
                """
            ),
            [{"m": model_id, "l": lab, "r": r, "c": c} for lab, (r, c) in seeds.items()],
        )


def record_feedback(conn: Connection, model_id: str, label: str, confirmed: bool) -> None:
    """A validated label on a cache answer: one more reuse, confirmed or not."""
    conn.execute(
        sa.text(
            """
            INSERT INTO cache_track_record (model_id, label, fb_reuses, fb_confirmed)
            VALUES (:m, :l, 1, :c)
            ON CONFLICT (model_id, label) DO UPDATE SET
                fb_reuses = cache_track_record.fb_reuses + 1,
                fb_confirmed = cache_track_record.fb_confirmed + EXCLUDED.fb_confirmed,
                updated_at = now()
            """
        ),
        {"m": model_id, "l": label, "c": int(confirmed)},
    )


def track_records(conn: Connection, model_id: str) -> dict[str, tuple[int, int]]:
    """Label -> (reuses, confirmed), seed and feedback together."""
    rows = conn.execute(
        sa.text(
            "SELECT label, seed_reuses + fb_reuses, seed_confirmed + fb_confirmed "
            "FROM cache_track_record WHERE model_id = :m"
        ),
        {"m": model_id},
    ).all()
    return {label: (int(r), int(c)) for label, r, c in rows}


def stored_vectors(conn: Connection, model_id: str) -> dict[str, tuple[str, np.ndarray]]:
    """Ticket id -> (content hash, vector) for everything embedded with this model."""
    rows = conn.execute(
        sa.text(
            "SELECT ticket_id, content_hash, embedding::text FROM ticket_embeddings "
            "WHERE model_id = :m"
        ),
        {"m": model_id},
    ).all()
    return {
        tid: (digest, np.array(text[1:-1].split(","), dtype=np.float32))
        for tid, digest, text in rows
    }

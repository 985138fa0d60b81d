"""Embed labelled tickets that are new or changed and upsert them into the vector cache."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from cca.embeddings import Embedder
from cca.store import Database
from cca.store.tickets_repo import COUNTS_AS_ORIGINAL
from cca.store.vectors import VectorRow, ensure_index, indexed_hashes, upsert_vectors
from cca.tickets import ticket_text

Progress = Callable[[int], None]


@dataclass
class IndexReport:
    model_id: str
    considered: int
    embedded: int
    relabelled: int
    dropped_duplicates: int = 0
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


# Only redacted, validated tickets that are not a counted-out near-duplicate reach the index,
# keyed by the hash of the redacted text.
_LABELLED = sa.text(
    f"""
    SELECT t.id, t.clean_subject AS subject, t.clean_body AS body,
           t.clean_hash AS content_hash, t.source, t.created_at,
           l.label, l.department, l.validated
    FROM tickets t JOIN ticket_labels l ON l.ticket_id = t.id
    WHERE t.sanitized_for = t.content_hash AND {COUNTS_AS_ORIGINAL}
      AND t.checked_for = t.clean_hash
      AND (CAST(:since AS timestamptz) IS NULL OR t.created_at >= :since)
    """
)


def index_labelled_tickets(
    db: Database,
    embedder: Embedder,
    batch_size: int = 1024,
    hnsw: bool = True,
    on_total: Callable[[int], None] | None = None,
    progress: Progress | None = None,
    since: datetime | None = None,
) -> IndexReport:
    """Only tickets whose text changed since they were embedded with this model are embedded.

    Label changes on unchanged text update the metadata without re-embedding. Tickets created
    before ``since`` (the retention window for embeddings) are not embedded again. Vectors only
    kept for training (the deep model's) need no search index: ``hnsw=False``.
    """
    t0 = time.perf_counter()
    with db.begin() as conn:
        rows = conn.execute(_LABELLED, {"since": since}).mappings().all()
        # A ticket found to be a near-duplicate after it was indexed leaves the index.
        dropped = conn.execute(
            sa.text("DELETE FROM ticket_embeddings e USING tickets t WHERE e.ticket_id = t.id "
                    f"AND e.model_id = :m AND NOT {COUNTS_AS_ORIGINAL}"),
            {"m": embedder.model_id},
        ).rowcount
        done = indexed_hashes(conn, embedder.model_id)
        relabelled = conn.execute(
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
            {"m": embedder.model_id},
        ).rowcount
    todo = [r for r in rows if done.get(r["id"]) != r["content_hash"]]
    if on_total:
        on_total(len(todo))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        texts = [ticket_text(r["subject"], r["body"]) for r in chunk]
        vectors = embedder.embed(texts, progress=progress)
        meta = [
            VectorRow(ticket_id=r["id"], content_hash=r["content_hash"], label=r["label"],
                      department=r["department"], source=r["source"], validated=r["validated"],
                      created_at=r["created_at"])
            for r in chunk
        ]
        with db.begin() as conn:
            upsert_vectors(conn, embedder.model_id, meta, vectors)
    if hnsw and (todo or rows):
        with db.begin() as conn:
            ensure_index(conn, embedder.model_id, embedder.dim)
    return IndexReport(model_id=embedder.model_id, considered=len(rows), embedded=len(todo),
                       relabelled=relabelled, dropped_duplicates=dropped,
                       seconds=round(time.perf_counter() - t0, 3))

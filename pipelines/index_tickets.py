"""Embed labelled tickets that are new or changed and upsert them into the vector cache."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from cca.embeddings import Embedder
from cca.store import Database
from cca.store.lifecycle_repo import ToIndex, to_index
from cca.store.vectors import (
    VectorRow,
    drop_counted_out,
    ensure_index,
    indexed_hashes,
    sync_labels,
    upsert_vectors,
)
from cca.tickets import ticket_text
from pipelines.progress import Progress


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


def index_labelled_tickets(
    db: Database,
    embedder: Embedder,
    batch_size: int = 1024,
    hnsw: bool = True,
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
        rows = to_index(conn, since)
        # A ticket found to be a near-duplicate after it was indexed leaves the index.
        dropped = drop_counted_out(conn, embedder.model_id)
        done = indexed_hashes(conn, embedder.model_id)
        relabelled = sync_labels(conn, embedder.model_id)
    todo = [r for r in rows if done.get(r.id) != r.content_hash]
    if progress:
        progress.set_total(len(todo))
    for start in range(0, len(todo), batch_size):
        _embed_and_store(db, embedder, todo[start : start + batch_size], progress)
    if hnsw and (todo or rows):
        with db.begin() as conn:
            ensure_index(conn, embedder.model_id, embedder.dim)
    return IndexReport(model_id=embedder.model_id, considered=len(rows), embedded=len(todo),
                       relabelled=relabelled, dropped_duplicates=dropped,
                       seconds=round(time.perf_counter() - t0, 3))


def _embed_and_store(db: Database, embedder: Embedder, chunk: list[ToIndex],
                     progress: Progress | None) -> None:
    """One batch embedded, then committed on its own."""
    vectors = embedder.embed([ticket_text(r.subject, r.body) for r in chunk], progress=progress)
    meta = [
        VectorRow(ticket_id=r.id, content_hash=r.content_hash, label=r.label,
                  department=r.department, source=r.source, validated=r.validated,
                  created_at=r.created_at)
        for r in chunk
    ]
    with db.begin() as conn:
        upsert_vectors(conn, embedder.model_id, meta, vectors)

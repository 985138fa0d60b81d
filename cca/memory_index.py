"""An in-process HNSW copy of one embedding model's labelled vectors (USearch).

The service asks for neighbours once per batch, on the cascade's one thread. Asking pgvector
costs a round trip in which that thread waits for PostgreSQL's backend to be scheduled, and
PostgreSQL's own CPU on the same cores. On the Banking77 index this graph answers in less of
the worker's CPU than either pgvector or an exact numpy search (benchmarks/RESULTS.md). Like
pgvector's, the graph is approximate; its similarities are exact float32 cosines, so the
cache's thresholds mean the same. ``cca.store.vector_feed`` keeps the copy equal to the
table.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import numpy as np

# onnxruntime must be loaded before USearch's extension: the other way round, onnxruntime's
# import dies with SIGSEGV in libstdc++'s locale code (usearch 2.26.6, onnxruntime 1.32.0;
# tests/unit/test_memory_index.py checks it in a fresh interpreter).
import onnxruntime  # noqa: F401
from usearch.index import BatchMatches, Index

from cca.tickets import Neighbour

# USearch's defaults, written down: graph degree, and the breadth of a build and a search.
_CONNECTIVITY, _EXPANSION_ADD, _EXPANSION_SEARCH = 16, 128, 64


class MemoryIndex:
    """One row per labelled ticket; thread-safe (one lock, held briefly)."""

    def __init__(self, model_id: str, dim: int) -> None:
        self.model_id, self.dim = model_id, dim
        self._lock = threading.Lock()
        self._index = self._new_index()
        self._key: dict[str, int] = {}  # ticket id -> the graph's integer key
        self._ticket: dict[int, tuple[str, str]] = {}  # key -> (ticket id, label)
        self._next_key = 0

    def _new_index(self) -> Index:
        return Index(ndim=self.dim, metric="cos", dtype="f32", connectivity=_CONNECTIVITY,
                     expansion_add=_EXPANSION_ADD, expansion_search=_EXPANSION_SEARCH)

    def __len__(self) -> int:
        return len(self._key)

    def __contains__(self, ticket_id: object) -> bool:
        return ticket_id in self._key

    def _unit(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        norms = np.linalg.norm(vectors, axis=1)
        ok = norms > 0  # a zero vector has no direction: pgvector's cosine is NaN for it too
        out = np.zeros_like(vectors)
        out[ok] = vectors[ok] / norms[ok, None]
        return out, ok

    def replace(self, rows: Iterable[tuple[str, str, np.ndarray]]) -> None:
        """Everything at once (start, reconnect): (ticket id, label, vector) rows. The new
        graph is built aside, so searches go on meanwhile."""
        ids, labels, vectors = [], [], []
        for tid, label, vector in rows:
            ids.append(tid)
            labels.append(label)
            vectors.append(vector)
        unit, ok = self._unit(np.vstack(vectors) if vectors
                              else np.zeros((0, self.dim), dtype=np.float32))
        keep = np.flatnonzero(ok)
        index = self._new_index()
        if len(keep):
            index.add(np.arange(len(keep), dtype=np.uint64), unit[keep])
        with self._lock:
            self._index = index
            self._key = {ids[i]: n for n, i in enumerate(keep)}
            self._ticket = {n: (ids[i], labels[i]) for n, i in enumerate(keep)}
            self._next_key = len(keep)

    def upsert(self, ticket_id: str, label: str, vector: np.ndarray) -> None:
        unit, ok = self._unit(vector)
        with self._lock:
            old = self._key.pop(ticket_id, None)
            if old is not None:
                self._index.remove(old)
                del self._ticket[old]
            if not ok[0]:  # a vector that lost its direction leaves
                return
            key = self._next_key
            self._next_key += 1
            self._index.add(key, unit[0])
            self._key[ticket_id] = key
            self._ticket[key] = (ticket_id, label)

    def remove(self, ticket_ids: Iterable[str]) -> int:
        """Drop these tickets (erasure, label withdrawn)."""
        removed = 0
        with self._lock:
            for tid in ticket_ids:
                key = self._key.pop(tid, None)
                if key is None:
                    continue
                self._index.remove(key)
                del self._ticket[key]
                removed += 1
        return removed

    def search(self, queries: np.ndarray, k: int) -> list[list[Neighbour]]:
        """Top-k by cosine similarity for each query, best first (as ``vectors.nearest``)."""
        unit, ok = self._unit(queries)
        out: list[list[Neighbour]] = [[] for _ in range(len(unit))]
        rows = np.flatnonzero(ok)
        with self._lock:
            if not self._key or k <= 0 or not len(rows):
                return out
            found = self._index.search(unit[rows], min(k, len(self._key)), threads=1)
            if isinstance(found, BatchMatches):
                lists = [(found.keys[j][:c], found.distances[j][:c])
                         for j, c in enumerate(found.counts)]
            else:
                lists = [(found.keys, found.distances)]
            for j, (keys, distances) in zip(rows, lists, strict=True):
                out[j] = [Neighbour(ticket_id=self._ticket[int(key)][0],
                                    label=self._ticket[int(key)][1],
                                    similarity=float(1.0 - d))
                          for key, d in zip(keys, distances, strict=True)]
        return out

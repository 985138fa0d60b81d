"""The in-memory vector copy answers what a brute-force cosine search answers, through loads,
upserts, relabels and removals: the same neighbours (HNSW is approximate, so nearly always,
not always: its graph is built on several threads) with exact similarities and current
labels, and never a ticket that has left."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cca.memory_index import MemoryIndex


def _brute(rows: dict[str, tuple[str, np.ndarray]], q: np.ndarray, k: int) -> list[str]:
    qn = q / np.linalg.norm(q)
    sims = {tid: float(v @ qn / np.linalg.norm(v)) for tid, (_, v) in rows.items()}
    return sorted(sims, key=lambda t: -sims[t])[:k]


def test_search_matches_brute_force_through_random_changes():
    rng = np.random.default_rng(7)
    dim = 16
    index = MemoryIndex("m", dim)
    rows = {f"t{i}": (f"l{i % 3}", rng.normal(size=dim).astype(np.float32)) for i in range(50)}
    index.replace((tid, label, v) for tid, (label, v) in rows.items())
    wanted = found_right = lists = lists_right = 0
    for step in range(300):
        op = rng.integers(3)
        tid = f"t{rng.integers(120)}"
        if op == 0:
            vector = rng.normal(size=dim).astype(np.float32)
            rows[tid] = (f"l{step % 5}", vector)
            index.upsert(tid, f"l{step % 5}", vector)
        elif op == 1:
            rows.pop(tid, None)
            index.remove([tid])
        else:
            q = rng.normal(size=dim).astype(np.float32)
            want = _brute(rows, q, 5)
            # One query (matrix-vector products) and a batch (one matrix product).
            for queries in (q[None, :], np.vstack([q] * 9)):
                for found in index.search(queries, 5):
                    ids = [n.ticket_id for n in found]
                    assert len(ids) == len(want) and set(ids) <= set(rows)  # none that left
                    sims = [n.similarity for n in found]
                    assert sims == sorted(sims, reverse=True)
                    for n in found:
                        assert n.label == rows[n.ticket_id][0]
                        v = rows[n.ticket_id][1]
                        exact = float(v @ q / np.linalg.norm(v) / np.linalg.norm(q))
                        assert n.similarity == pytest.approx(exact, abs=1e-5)
                    wanted += len(want)
                    found_right += len(set(ids) & set(want))
                    lists, lists_right = lists + 1, lists_right + (ids == want)
        assert len(index) == len(rows)
    # The graph rarely misses a true neighbour; an index that keeps a stale vector or loses
    # a row misses far more.
    assert lists > 100 and found_right / wanted >= 0.99 and lists_right / lists >= 0.97


def test_similarity_is_cosine_and_best_first():
    index = MemoryIndex("m", 2)
    index.replace([("a", "x", np.array([1.0, 0.0])), ("b", "y", np.array([1.0, 1.0])),
                   ("c", "z", np.array([0.0, 3.0]))])
    found = index.search(np.array([[2.0, 0.0]]), 5)[0]
    assert [n.ticket_id for n in found] == ["a", "b", "c"]
    assert [round(n.similarity, 4) for n in found] == [1.0, round(1 / np.sqrt(2), 4), 0.0]


def test_relabel_keeps_one_row_per_ticket():
    index = MemoryIndex("m", 2)
    index.upsert("a", "old", np.array([1.0, 0.0]))
    index.upsert("a", "new", np.array([0.0, 1.0]))
    found = index.search(np.array([[0.0, 1.0]]), 5)[0]
    assert [(n.ticket_id, n.label) for n in found] == [("a", "new")]
    assert found[0].similarity == pytest.approx(1.0)


def test_zero_vectors_have_no_neighbours_and_are_not_stored():
    index = MemoryIndex("m", 2)
    index.replace([("a", "x", np.array([1.0, 0.0])), ("z", "x", np.zeros(2))])
    assert len(index) == 1 and "z" not in index
    assert index.search(np.zeros((1, 2)), 5) == [[]]
    index.upsert("a", "x", np.zeros(2))  # a vector that lost its direction leaves
    assert len(index) == 0


def test_empty_index_and_removing_unknown_tickets():
    index = MemoryIndex("m", 3)
    assert index.search(np.ones((2, 3)), 5) == [[], []]
    assert index.remove(["nope"]) == 0


def test_grows_past_its_capacity_one_ticket_at_a_time():
    index = MemoryIndex("m", 4)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(300, 4)).astype(np.float32)
    for i, v in enumerate(vectors):
        index.upsert(f"t{i}", "l", v)
    assert len(index) == 300
    assert index.search(vectors[123][None, :], 1)[0][0].ticket_id == "t123"


def test_loading_the_index_first_does_not_crash_onnxruntime():
    """USearch's extension loaded before onnxruntime's made onnxruntime's import die with
    SIGSEGV; the module orders them. A fresh interpreter, since either may be loaded here."""
    done = subprocess.run([sys.executable, "-c", "import cca.memory_index; import onnxruntime; "
                           "from cca.embeddings import OnnxMiniLM"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

"""The service's in-memory copy of the labelled vectors follows PostgreSQL (real server):
every worker's copy sees feedback, relabels, erasure and re-indexing within moments of the
commit, reloads after a lost connection, gives up past its size limit, and answers what
pgvector answers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pytest
import sqlalchemy as sa

from cca.store.tickets_repo import upsert_tickets
from cca.store.vector_feed import VectorFeed
from cca.store.vectors import VectorRow, nearest, record_feedback, relabel, upsert_vectors
from cca.tickets import Ticket
from tests.conftest import wait_until

MODEL, DIM = "test-feed-model", 8


def _add(db, ids: list[str], vectors: np.ndarray, label: str | None = "card_lost",
         model: str = MODEL) -> None:
    now = datetime.now(UTC)
    with db.begin() as conn:
        upsert_tickets(conn, [Ticket(id=t, body=f"ticket {t}") for t in ids])
        upsert_vectors(conn, model, [
            VectorRow(ticket_id=t, content_hash="h", label=label, department=None,
                      source="test", validated=label is not None, created_at=now)
            for t in ids], vectors)


def _ids(feed: VectorFeed, q: np.ndarray, k: int = 50) -> list[str]:
    found = feed.search(q[None, :], k)
    assert found is not None
    return [n.ticket_id for n in found[0]]


@pytest.fixture
def feeds(clean_db) -> Iterator[list[VectorFeed]]:
    """Two workers' copies."""
    started = [VectorFeed(clean_db, MODEL, DIM, max_vectors=1000, retry_s=0.1)
               for _ in range(2)]
    for feed in started:
        assert feed.start(timeout_s=30)
    yield started
    for feed in started:
        feed.close()


def test_every_copy_follows_inserts_relabels_and_deletes(clean_db, feeds):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(4, DIM)).astype(np.float32)
    _add(clean_db, ["a", "b", "c"], vectors[:3])
    _add(clean_db, ["u"], vectors[3:], label=None)  # not validated: never a neighbour
    _add(clean_db, ["other"], vectors[:1], model="another-model")
    for feed in feeds:
        assert wait_until(lambda f=feed: len(f.index) == 3)
        assert set(_ids(feed, vectors[0])) == {"a", "b", "c"}
    with clean_db.begin() as conn:
        relabel(conn, "b", "card_arrival", "Cards")
    for feed in feeds:
        assert wait_until(lambda f=feed: [n.label for n in f.search(vectors[1][None, :], 1)[0]]
                     == ["card_arrival"])
    # Right to deletion: the ticket goes and its vectors with it (ON DELETE CASCADE).
    with clean_db.begin() as conn:
        conn.execute(sa.text("DELETE FROM tickets WHERE id = 'a'"))
    for feed in feeds:
        assert wait_until(lambda f=feed: "a" not in f.index)
        assert set(_ids(feed, vectors[0])) == {"b", "c"}


def test_catch_up_returns_once_an_earlier_commit_is_in_the_copy(clean_db, feeds):
    vector = np.ones((1, DIM), dtype=np.float32)
    _add(clean_db, ["now"], vector)
    assert feeds[0].catch_up(timeout_s=5)
    assert "now" in feeds[0].index  # no polling: the marker came back after the change


def test_a_bulk_relabel_and_a_truncate_reload_everything(clean_db, feeds):
    rng = np.random.default_rng(5)
    many = [f"bulk-{i:04d}-{'x' * 40}" for i in range(300)]
    _add(clean_db, many, rng.normal(size=(300, DIM)).astype(np.float32))
    assert wait_until(lambda: all(len(f.index) == 300 for f in feeds))
    reloads = [f.reloads for f in feeds]
    # One statement naming 300 long ids: too long a list for a notification, so '*'.
    with clean_db.begin() as conn:
        conn.execute(sa.text("UPDATE ticket_embeddings SET label = 'card_arrival' "
                             "WHERE model_id = :m"), {"m": MODEL})
    for feed, before in zip(feeds, reloads, strict=True):
        assert wait_until(lambda f=feed, b=before: f.reloads > b)
        assert {n.label for n in feed.search(np.ones((1, DIM), np.float32), 300)[0]} == {
            "card_arrival"}
    with clean_db.begin() as conn:
        conn.execute(sa.text("TRUNCATE ticket_embeddings"))
    assert wait_until(lambda: all(len(f.index) == 0 for f in feeds))


def test_track_record_changes_reach_every_worker(clean_db):
    seen: list[int] = []
    feed = VectorFeed(clean_db, MODEL, DIM, max_vectors=1000,
                      on_track_record=lambda: seen.append(1))
    assert feed.start(timeout_s=30)
    try:
        before = len(seen)
        with clean_db.begin() as conn:
            record_feedback(conn, MODEL, "card_lost", confirmed=True)
        # The service's /feedback relies on this: once catch_up returns, the refresh has run.
        assert feed.catch_up(timeout_s=5)
        assert len(seen) > before
        with clean_db.begin() as conn:
            record_feedback(conn, MODEL, "card_lost", confirmed=False)
        assert wait_until(lambda: len(seen) > before + 1)  # and without asking
    finally:
        feed.close()


def test_a_lost_connection_reloads_and_misses_nothing(clean_db, feeds):
    vectors = np.eye(DIM, dtype=np.float32)
    _add(clean_db, ["before"], vectors[:1])
    assert wait_until(lambda: "before" in feeds[0].index)
    # Drop the feeds' connections, then change the table before they reconnect: the
    # notification is lost, the reload on reconnect must still bring the change.
    with clean_db.begin() as conn:
        killed = conn.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity, LATERAL pg_terminate_backend(pid) AS t "
            "WHERE application_name = 'cca-vector-feed' AND t")).scalar()
        assert killed == 2
        conn.execute(sa.text("DELETE FROM tickets WHERE id = 'before'"))
    _add(clean_db, ["after"], vectors[1:2])
    for feed in feeds:
        assert wait_until(lambda f=feed: f.reloads >= 2 and f.connected)
        assert wait_until(lambda f=feed: "after" in f.index and "before" not in f.index)


def test_past_its_size_limit_the_copy_steps_aside_for_pgvector(clean_db):
    rng = np.random.default_rng(9)
    _add(clean_db, ["x1", "x2", "x3"], rng.normal(size=(3, DIM)).astype(np.float32))
    feed = VectorFeed(clean_db, MODEL, DIM, max_vectors=2)
    try:
        assert feed.start(timeout_s=30) is False
        assert feed.search(np.ones((1, DIM), dtype=np.float32), 5) is None
    finally:
        feed.close()
    feed = VectorFeed(clean_db, MODEL, DIM, max_vectors=3)
    try:
        assert feed.start(timeout_s=30) is True
        _add(clean_db, ["x4"], rng.normal(size=(1, DIM)).astype(np.float32))
        assert wait_until(lambda: feed.search(np.ones((1, DIM), dtype=np.float32), 5) is None)
    finally:
        feed.close()


def test_the_copy_answers_what_pgvector_answers(clean_db, feeds):
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(200, DIM)).astype(np.float32)
    ids = [f"v{i}" for i in range(200)]
    _add(clean_db, ids, vectors)
    assert wait_until(lambda: len(feeds[0].index) == 200)
    queries = rng.normal(size=(20, DIM)).astype(np.float32)
    # No HNSW index for this model: pgvector scans every row, an exact search too.
    expected = clean_db.read(lambda conn: nearest(conn, MODEL, queries, 5))
    got = feeds[0].search(queries, 5)
    assert got is not None
    for mine, theirs in zip(got, expected, strict=True):
        assert [n.ticket_id for n in mine] == [n.ticket_id for n in theirs]
        assert np.allclose([n.similarity for n in mine], [n.similarity for n in theirs],
                           atol=1e-5)


class _Deaf(VectorFeed):
    """A feed whose notifications never arrive, as behind a transaction-pooling proxy."""

    def _follow(self, conn) -> None:
        while not self._stop.wait(0.05):
            pass


def test_a_feed_that_hears_nothing_steps_aside_for_pgvector(clean_db):
    _add(clean_db, ["d1"], np.ones((1, DIM), dtype=np.float32))
    feed = _Deaf(clean_db, MODEL, DIM, max_vectors=1000)
    assert feed.start(timeout_s=30) is False  # loaded, but its test notification was lost
    assert feed.search(np.ones((1, DIM), dtype=np.float32), 5) is None

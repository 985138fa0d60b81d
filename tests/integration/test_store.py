import pytest
import sqlalchemy as sa

from cca.errors import StateError
from cca.settings import Settings
from cca.store import open_database


def test_schema_and_pgvector_are_in_place(db):
    with db.begin() as conn:
        tables = set(conn.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
        version = conn.execute(sa.text(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
    assert {"tickets", "ticket_labels", "ticket_embeddings", "decisions",
            "cache_track_record", "quarantine", "ticket_minhash", "ingested_files",
            "ingest_cursors", "model_events", "alembic_version"} <= tables
    assert version and version >= "0.8"


def test_migrations_are_idempotent(settings, db):
    again = open_database(settings)  # reuses the running server, upgrade is a no-op
    with again.begin() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0005"
    again.dispose()


def test_audit_log_refuses_update_delete_truncate(db):
    with db.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO decisions (ticket_id, text_hash, stage, urgency, confidence, "
            "model_version, latency_ms) VALUES ('a', 'h', 'review', 'normal', 0.1, 'm', 1)"))
    for statement in ("UPDATE decisions SET stage = 'rules'", "DELETE FROM decisions",
                      "TRUNCATE decisions"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), db.begin() as conn:
            conn.execute(sa.text(statement))
    with db.begin() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM decisions")).scalar() >= 1


def test_model_events_are_append_only(db):
    with db.begin() as conn:
        conn.execute(sa.text("INSERT INTO model_events (action, model, version, actor) "
                             "VALUES ('promote', 'm', '1', 'test')"))
    for statement in ("UPDATE model_events SET actor = 'someone else'",
                      "DELETE FROM model_events", "TRUNCATE model_events"):
        with pytest.raises(sa.exc.DBAPIError, match="model_events is append-only"), \
                db.begin() as conn:
            conn.execute(sa.text(statement))


def test_postgres_without_pgvector_is_a_clear_error(tmp_path):
    # The machine's PostgreSQL 15 on 127.0.0.1:5432 has no pgvector.
    s = Settings(home=tmp_path, database_url="postgresql://postgres@127.0.0.1:5432/test")
    with pytest.raises(StateError, match="has no pgvector extension"):
        open_database(s)


def test_unreachable_database_is_a_clear_error(tmp_path):
    s = Settings(home=tmp_path, database_url="postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(StateError, match="cannot connect to PostgreSQL"):
        open_database(s)


def test_exclusive_steps_wait_for_each_other(db):
    import threading

    from cca.store import exclusive

    order: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with exclusive(db, "dedup"):
            order.append("first in")
            inside.set()
            threading.Event().wait(0.5)
            order.append("first out")

    worker = threading.Thread(target=first)
    worker.start()
    inside.wait(10)
    with exclusive(db, "dedup"):
        order.append("second in")
    with exclusive(db, "sanitize"):  # another step's lock is independent
        pass
    worker.join()
    assert order == ["first in", "first out", "second in"]


def _reader_pids(db) -> set[int]:
    return {db.read(lambda conn: conn.execute(sa.text("SELECT pg_backend_pid()")).scalar())}


def test_read_is_one_autocommit_query_and_survives_a_dropped_connection(db):
    # Autocommit: nothing is left open between queries (no BEGIN/COMMIT round trips).
    status = db.read(lambda conn: conn.execute(sa.text(
        "SELECT state FROM pg_stat_activity WHERE pid = pg_backend_pid()")).scalar())
    assert status == "active"
    assert db.read(lambda conn: conn.execute(sa.text("SELECT now() = statement_timestamp()"))
                   .scalar()) is True  # its own transaction, no BEGIN before it
    # PostgreSQL drops the reader's connection (as in a restart): the next read, which does
    # not ping first, retries once on a new connection instead of failing.
    pids = _reader_pids(db)
    with db.begin() as conn:
        killed = conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity, "
                                      "LATERAL pg_terminate_backend(pid) AS t "
                                      "WHERE pid = ANY(:p) AND t"), {"p": list(pids)}).scalar()
    assert killed == 1
    after = _reader_pids(db)
    assert after and after.isdisjoint(pids)
    # A query that fails for another reason is not retried: the error reaches the caller.
    calls = []

    def bad(conn):
        calls.append(1)
        return conn.execute(sa.text("SELECT * FROM no_such_table")).all()

    with pytest.raises(sa.exc.ProgrammingError):
        db.read(bad)
    assert len(calls) == 1


def _ef_search(conn) -> str:
    return conn.exec_driver_sql("SHOW hnsw.ef_search").scalar()


def test_every_connection_searches_with_the_configured_hnsw_breadth(settings, db):
    want = str(settings.cache_hnsw_ef_search)
    assert want != "40"  # not pgvector's own default, so the setting is what is seen
    assert db.read(_ef_search) == want
    with db.begin() as conn:
        assert _ef_search(conn) == want
    with db.begin() as conn:  # a rolled-back transaction does not undo it
        conn.exec_driver_sql("SELECT 1")
        conn.rollback()
    with db.begin() as conn:
        assert _ef_search(conn) == want
    other = open_database(settings.model_copy(update={"cache_hnsw_ef_search": 64}),
                          migrate=False)
    try:
        assert other.read(_ef_search) == "64"
        with other.begin() as conn:
            assert _ef_search(conn) == "64"
    finally:
        other.dispose()
    assert db.read(_ef_search) == want

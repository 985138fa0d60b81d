import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from cca.errors import StateError
from cca.settings import Settings
from cca.store import open_database
from cca.store.tickets_repo import upsert_tickets
from cca.tickets import Decision, Ticket


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
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0007"
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


def test_ingested_files_and_connector_cursors(db):
    from cca.store import ingest_repo
    from cca.store.ingest_repo import IngestedFile

    sha = uuid.uuid4().hex
    name = f"cursor-test-{sha[:8]}"
    with db.begin() as conn:
        assert not ingest_repo.file_ingested(conn, sha)
        ingest_repo.record_file(conn, IngestedFile(sha, "a.csv", "a", tickets=3, quarantined=1))
        ingest_repo.record_file(conn, IngestedFile(sha, "b.csv", "b", tickets=0, quarantined=0))
        assert ingest_repo.file_ingested(conn, sha)  # by content, whatever the name
        assert ingest_repo.get_cursor(conn, name) is None
        ingest_repo.set_cursor(conn, name, "2026-01-01T00:00:00Z")
        ingest_repo.set_cursor(conn, name, "2026-01-02T00:00:00Z")
        assert ingest_repo.get_cursor(conn, name) == "2026-01-02T00:00:00Z"
        [(stored,)] = conn.execute(sa.text("SELECT name FROM ingested_files WHERE sha256 = :h"),
                                   {"h": sha}).all()
    assert stored == "a.csv"  # the first record of a content stays


def test_a_changed_original_sends_its_duplicates_back_to_the_check(clean_db):
    from cca.store import dedup_repo

    with clean_db.begin() as conn:
        upsert_tickets(conn, [Ticket(id=t, body=f"text {t}") for t in ("A", "B", "C")])
        conn.execute(sa.text("UPDATE tickets SET dedup_for = 'h', duplicate_of = 'A' "
                             "WHERE id IN ('B', 'C')"))
        assert dedup_repo.namespace(conn) == dedup_repo.namespace(conn)  # stored once
        dedup_repo.recheck_duplicates_of(conn, changed=["A"], checked=["A", "C"])
        marks = dict(conn.execute(sa.text("SELECT id, dedup_for FROM tickets "
                                          "WHERE id IN ('B', 'C')")).all())
    assert marks == {"B": None, "C": "h"}  # C was checked in the same chunk: left alone


def test_shadow_pairs_are_typed_and_accuracy_waits_for_feedback(clean_db):
    from cca.store.shadow_repo import ShadowPair, shadow_pairs
    from cca.store.tickets_repo import set_labels

    with clean_db.begin() as conn:
        upsert_tickets(conn, [Ticket(id=t, body=f"text {t}") for t in ("S1", "S2")])
        for tid, challenger in (("S1", "refunds"), ("S2", None)):
            conn.execute(sa.text(
                "INSERT INTO shadow_decisions (ticket_id, champion_version, challenger_version, "
                "champion_stage, challenger_stage, champion_label, challenger_label, "
                "champion_conf, challenger_conf, challenger_ms) VALUES (:t, '1', '2', "
                "'classifier', :stage, 'refunds', :label, 0.9, 0.8, 4.0)"),
                {"t": tid, "label": challenger,
                 "stage": "classifier" if challenger else "review"})
        [before] = shadow_pairs(conn, days=30)
        set_labels(conn, {"S1": ("refunds", "billing")}, origin="feedback")
        set_labels(conn, {"S2": ("billing_question", "billing")}, origin="import")
        [after] = shadow_pairs(conn, days=30)
    assert isinstance(before, ShadowPair)
    assert (before.compared, before.with_feedback, before.agreement) == (2, 0, 0.5)
    assert before.champion_accuracy is None and before.challenger_review_rate == 0.5
    assert before.challenger_ms_mean == 4.0
    # Only feedback labels count (S2's imported label does not).
    assert (after.with_feedback, after.champion_accuracy, after.challenger_accuracy) == (
        1, 1.0, 1.0)


def test_last_decision_is_the_newest_one_typed(db):
    from cca.store.audit import append_decisions, last_decision

    tid = f"audit-{uuid.uuid4().hex[:8]}"
    ticket = Ticket(id=tid, body="where is my card")
    with db.begin() as conn:
        assert last_decision(conn, tid) is None
        for stage, label in (("classifier", "card_arrival"), ("cache", "card_delivery")):
            append_decisions(conn, [(ticket, Decision(
                ticket_id=tid, label=label, department="cards", stage=stage, confidence=0.9,
                model_version="v1", rule_id=None))])
        last = last_decision(conn, tid)
    assert last is not None
    assert (last.stage, last.label, last.model_version) == ("cache", "card_delivery", "v1")
    assert last.details["rule_id"] is None


def test_quarantine_release_and_payload_purge(db):
    from cca.store.quarantine import QuarantineItem, purge_payloads, quarantine, release

    loc = f"ticket:{uuid.uuid4().hex[:8]}"
    with db.begin() as conn:
        quarantine(conn, [QuarantineItem("validate", "s", loc, "bad", {"body": "raw text"}),
                          QuarantineItem("ingest", "s", loc, "bad", {"body": "raw text"})])
        release(conn, "validate", [loc])
        # Dated long ago, so the purge touches no other test's rows.
        conn.execute(sa.text("UPDATE quarantine SET quarantined_at = :t WHERE location = :l"),
                     {"t": datetime(2000, 1, 1, tzinfo=UTC), "l": loc})
        purged = purge_payloads(conn, datetime(2000, 1, 2, tzinfo=UTC))
        again = purge_payloads(conn, datetime(2000, 1, 2, tzinfo=UTC))
        rows = conn.execute(sa.text("SELECT stage, released_at IS NOT NULL, payload, reason "
                                    "FROM quarantine WHERE location = :l ORDER BY stage"),
                            {"l": loc}).all()
    assert (purged, again) == (2, 0)
    # Only the stage named is released; the reason outlives the payload.
    assert rows == [("ingest", False, {}, "bad"), ("validate", True, {}, "bad")]

"""The data lifecycle steps against the real embedded PostgreSQL, Redis and GE suites."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta

import pytest
import redis
import sqlalchemy as sa

from cca.departments import load_department_map
from cca.store.dedup_repo import namespace
from cca.store.tickets_repo import upsert_tickets
from cca.tickets import Ticket
from pipelines import lifecycle
from pipelines.connectors import ServiceNowConnector
from pipelines.dedup import NearDuplicateIndex
from pipelines.ingest import ingest_from_connector
from pipelines.validate import ValidationFailed
from tests.conftest import FIXTURES
from tests.standins.servicenow import ServiceNowStandIn

SIDE = "text: message\nlabel: intent\nid: ticket_id\nsubject: subject\npriority: priority\n"


def rows(db, query: str, **params) -> list:
    with db.begin() as conn:
        return conn.execute(sa.text(query), params).all()


def drop(settings, name: str, content: str, sidecar: str | None = SIDE) -> None:
    settings.inbox.mkdir(parents=True, exist_ok=True)
    (settings.inbox / name).write_text(content, encoding="utf-8")
    if sidecar:
        (settings.inbox / f"{name}.columns.yaml").write_text(sidecar)


@pytest.fixture
def fresh(settings, clean_db):
    with clean_db.begin() as conn:
        conn.execute(sa.text("TRUNCATE quarantine, ingested_files, ticket_minhash"))
    shutil.rmtree(settings.inbox, ignore_errors=True)
    return clean_db


def test_inbox_stores_good_records_quarantines_bad_and_skips_repeats(settings, fresh):
    good = (FIXTURES / "service_desk.csv").read_text()
    bad = ("ticket_id,subject,message,intent,priority\n"
           "X-1,,fine text here,password_reset,normal\n"
           "X-2,,,password_reset,normal\n"                     # no text
           "X-3,,please refund me,refunds,normal\n"            # unknown label
           "X-1,,same id again,password_reset,normal\n"        # duplicate id
           "X-4,,priority is odd,password_reset,sometimes\n")  # invalid field
    drop(settings, "desk.csv", good)
    drop(settings, "bad.csv", bad)
    (settings.inbox / "broken.csv").write_bytes(b"words\nhello\n")  # no text column
    report = lifecycle.ingest_inbox(settings, fresh)
    assert report["files"] == 3 and report["failed_files"] == 1
    assert report["tickets_new"] == 49 and report["labelled"] == 49
    reasons = dict(rows(fresh, "SELECT location, reason FROM quarantine WHERE stage='ingest'"))
    assert reasons["bad.csv:3"].startswith("empty or missing text")
    assert "unknown label 'refunds'" in reasons["bad.csv:4"]
    assert "duplicate id 'X-1'" in reasons["bad.csv:5"]
    assert "priority" in reasons["bad.csv:6"]
    assert any("no text column" in r for r in reasons.values())
    assert not any(settings.inbox.glob("*.csv"))
    assert list((settings.inbox / "failed").rglob("broken.csv.reason"))
    drop(settings, "desk.csv", good)  # the same content again is skipped, not re-imported
    again = lifecycle.ingest_inbox(settings, fresh)
    assert again["skipped_already_ingested"] == 1 and again["tickets_new"] == 0


def test_invalid_utf8_record_is_quarantined_alone(settings, fresh):
    settings.inbox.mkdir(parents=True, exist_ok=True)
    (settings.inbox / "mixed.jsonl").write_bytes(
        b'{"id": "J-1", "body": "my parcel is late", "label": "delivery_delay"}\n'
        b'{"id": "J-2", "body": "bad \xff byte", "label": "delivery_delay"}\n')
    report = lifecycle.ingest_inbox(settings, fresh)
    assert report["tickets_new"] == 1 and report["quarantined"] == 1
    [(reason, payload)] = rows(fresh, "SELECT reason, payload FROM quarantine")
    assert "not valid UTF-8" in reason and payload["id"] == "J-2"


def prepared(settings, db) -> dict:
    drop(settings, "desk.csv", (FIXTURES / "service_desk.csv").read_text()
         + "SD-900,Password,I forgot my password and cannot log in!,password_reset,normal\n"
         + "SD-901,Refund,Email me at jane.doe@example.com or call +44 20 7946 0958,"
           "billing_question,normal\n")
    lifecycle.ingest_inbox(settings, db)
    return lifecycle.prepare(settings, db)


def test_prepare_redacts_links_near_duplicates_validates_and_indexes(settings, fresh):
    report = prepared(settings, fresh)
    assert report["sanitize"]["sanitized"] == 50
    assert report["sanitize"]["found"] == {"EMAIL": 1, "PHONE": 1}
    [(raw, clean)] = rows(fresh, "SELECT body, clean_body FROM tickets WHERE id = 'SD-901'")
    assert "jane.doe@example.com" in raw
    assert clean == "Email me at <EMAIL> or call <PHONE>"
    assert rows(fresh, "SELECT duplicate_of FROM tickets WHERE id = 'SD-900'") == [("SD-001",)]
    assert report["dedup"]["duplicates"] == 1
    assert report["validate"]["checked"] == 50
    assert report["validate"]["clean_suite"]["success"]
    static = report["index"]["models"][0]
    assert static["embedded"] == 49  # the near-duplicate stays out of the index
    assert rows(fresh, "SELECT count(*) FROM ticket_embeddings WHERE ticket_id = 'SD-900'"
                ) == [(0,)]
    again = lifecycle.prepare(settings, fresh)  # incremental: nothing new, nothing redone
    assert again["sanitize"]["sanitized"] == 0 and again["dedup"]["checked"] == 0
    assert again["validate"]["checked"] == 0
    assert all(m["embedded"] == 0 for m in again["index"]["models"])


def test_lost_redis_index_is_rebuilt_from_postgres(settings, fresh):
    prepared(settings, fresh)
    with fresh.begin() as conn:
        index = NearDuplicateIndex(settings, namespace(conn))
    r = redis.Redis.from_url(settings.redis_url)
    for key in r.scan_iter(match=f"{index.basename}*"):
        r.delete(key)
    with fresh.begin() as conn:
        conn.execute(sa.text(
            "UPDATE tickets SET body = 'I forgot my password and cannot log in!!' "
            "|| '', content_hash = 'changed' WHERE id = 'SD-900'"))
    report = lifecycle.prepare(settings, fresh)
    assert report["dedup"]["rebuilt_index"] is True
    assert report["dedup"]["duplicates"] == 1  # found against history restored from PostgreSQL


def test_pii_left_in_clean_text_quarantines_that_ticket_and_passes_the_rest(settings, fresh):
    drop(settings, "desk.csv", (FIXTURES / "service_desk.csv").read_text())
    lifecycle.ingest_inbox(settings, fresh)
    lifecycle.sanitize_pending(settings, fresh)
    lifecycle.dedup_pending(settings, fresh)
    with fresh.begin() as conn:  # as if a redaction rule had missed an address
        conn.execute(sa.text("UPDATE tickets SET clean_body = clean_body || ' bob@example.com'"
                             " WHERE id = 'SD-002'"))
    report = lifecycle.validate_pending(settings, fresh)
    assert (report["checked"], report["quarantined"]) == (47, 1)
    [(location, reason)] = rows(fresh, "SELECT location, reason FROM quarantine "
                                       "WHERE stage = 'validate'")
    assert location == "ticket:SD-002" and "clean_tickets" in reason and ".html" in reason
    assert "bob@example.com" not in reason
    indexed = lifecycle.index_pending(settings, fresh)["models"][0]
    assert indexed["considered"] == 47
    assert rows(fresh, "SELECT count(*) FROM ticket_embeddings WHERE ticket_id = 'SD-002'"
                ) == [(0,)]
    assert lifecycle.validate_pending(settings, fresh)["checked"] == 0  # not retried as is
    with fresh.begin() as conn:  # fixed: the next run checks it again and lets it through
        conn.execute(sa.text("UPDATE tickets SET clean_body = 'How do I reset my password?', "
                             "clean_hash = 'fixed', dedup_for = 'fixed' WHERE id = 'SD-002'"))
    assert lifecycle.validate_pending(settings, fresh)["checked"] == 1


def test_a_batch_level_failure_stops_validation_and_marks_nothing(settings, fresh):
    drop(settings, "desk.csv", (FIXTURES / "service_desk.csv").read_text())
    lifecycle.ingest_inbox(settings, fresh)
    lifecycle.sanitize_pending(settings, fresh)
    lifecycle.dedup_pending(settings, fresh)
    strict = settings.model_copy(update={"ge_suites_dir": settings.home / "suites"})
    strict.ge_suites_dir.mkdir(exist_ok=True)
    for suite in ("raw_tickets", "clean_tickets"):
        spec = json.loads((settings.ge_suites_dir / f"{suite}.json").read_text())
        spec["expectations"].append({"type": "expect_table_row_count_to_be_between",
                                     "kwargs": {"min_value": 1000}})
        (strict.ge_suites_dir / f"{suite}.json").write_text(json.dumps(spec))
    with pytest.raises(ValidationFailed, match=r"expect_table_row_count_to_be_between.*\.html"):
        lifecycle.validate_pending(strict, fresh)
    assert rows(fresh, "SELECT count(*) FROM tickets WHERE checked_for IS NOT NULL") == [(0,)]
    assert lifecycle.index_pending(settings, fresh)["models"][0]["considered"] == 0


def test_connector_records_are_stored_and_cursor_kept(settings, fresh):
    with ServiceNowStandIn() as sn:
        connector = ServiceNowConnector(sn.url, sn.user, sn.password, page_size=2,
                                        sleep=lambda _: None)
        result = ingest_from_connector(fresh, connector, load_department_map(None))
        assert not sn.violations, sn.violations
    assert result["new"] >= 2 and result["cursor"]
    [(cursor,)] = rows(fresh, "SELECT cursor FROM ingest_cursors WHERE connector='servicenow'")
    assert cursor == result["cursor"]
    stored = rows(fresh, "SELECT id, source FROM tickets ORDER BY id")
    assert all(source == "servicenow" and tid.startswith("servicenow-") for tid, source in stored)
    assert len(rows(fresh, "SELECT * FROM quarantine")) == result["quarantined"]


def test_retention_purges_old_raw_text_and_embeddings_but_keeps_audit(settings, fresh):
    prepared(settings, fresh)
    old = datetime.now(UTC) - timedelta(days=800)
    with fresh.begin() as conn:
        conn.execute(sa.text("UPDATE tickets SET created_at = :t WHERE id IN ('SD-001', 'SD-002')"),
                     {"t": old})
        conn.execute(sa.text("UPDATE ticket_embeddings SET created_at = :t "
                             "WHERE ticket_id = 'SD-001'"), {"t": old})
        conn.execute(sa.text(
            "INSERT INTO decisions (ticket_id, text_hash, stage, urgency, confidence, "
            "model_version, latency_ms, details) VALUES ('SD-001', 'h', 'review', 'normal', 0, "
            "'v', 1, CAST(:d AS jsonb))"), {"d": json.dumps({})})
        audit_before = conn.execute(sa.text("SELECT count(*) FROM decisions")).scalar()
    with fresh.begin() as conn:  # arrived late and old: not redacted yet, so it keeps its text
        conn.execute(sa.text(
            "INSERT INTO tickets (id, source, body, created_at, content_hash) "
            "VALUES ('LATE-1', 'x', 'my name is Ann Lee', :t, 'h')"), {"t": old})
    old_day = settings.inbox / "processed" / f"{old:%Y-%m-%d}"
    old_day.mkdir(parents=True)
    (old_day / "tickets.csv").write_text("raw customer text")
    report = lifecycle.purge_expired(settings, fresh)
    assert report["raw_text_purged"] == 2 and report["embeddings_deleted"] == 2
    assert report["inbox_folders_deleted"] == 1 and not old_day.exists()
    assert any((settings.inbox / "processed").iterdir())  # today's folder stays
    assert rows(fresh, "SELECT body FROM tickets WHERE id = 'LATE-1'") == [("my name is Ann Lee",)]
    [(body, clean, purged)] = rows(
        fresh, "SELECT body, clean_body, raw_purged_at FROM tickets WHERE id = 'SD-001'")
    assert body == "" and clean and purged is not None
    assert rows(fresh, "SELECT count(*) FROM decisions")[0][0] == audit_before
    assert lifecycle.purge_expired(settings, fresh)["raw_text_purged"] == 0
    with fresh.begin() as conn:  # a purged ticket imported again gets its text processed anew
        upsert_tickets(conn, [Ticket(id="SD-001", body="I forgot my password again",
                                     created_at=old)])
    assert rows(fresh, "SELECT raw_purged_at FROM tickets WHERE id = 'SD-001'") == [(None,)]
    assert lifecycle.sanitize_pending(settings, fresh)["sanitized"] == 2  # SD-001 and LATE-1


def test_a_future_dated_ticket_is_retried_once_its_date_is_corrected(settings, fresh):
    future = (datetime.now(UTC) + timedelta(days=40)).isoformat()
    head = "ticket_id,message,intent,created_at\n"
    drop(settings, "dated.csv", head + f"D-1,my parcel is late again,delivery_delay,{future}\n"
         "D-2,I forgot my password,password_reset,2026-01-05T09:00:00+00:00\n",
         sidecar="text: message\nlabel: intent\nid: ticket_id\ncreated_at: created_at\n")
    lifecycle.ingest_inbox(settings, fresh)
    first = lifecycle.prepare(settings, fresh)
    assert (first["validate"]["checked"], first["validate"]["quarantined"]) == (1, 1)
    [(reason, released)] = rows(fresh, "SELECT reason, released_at FROM quarantine "
                                       "WHERE location = 'ticket:D-1'")
    assert "created_in_future" in reason and "text_chars" not in reason and released is None
    assert lifecycle.validate_pending(settings, fresh)["checked"] == 0  # not retried as it is
    drop(settings, "dated-fixed.csv",
         head + "D-1,my parcel is late again,delivery_delay,2026-01-06T10:00:00+00:00\n",
         sidecar="text: message\nlabel: intent\nid: ticket_id\ncreated_at: created_at\n")
    assert lifecycle.ingest_inbox(settings, fresh)["tickets_updated"] == 1
    again = lifecycle.prepare(settings, fresh)
    assert (again["validate"]["checked"], again["validate"]["quarantined"]) == (1, 0)
    assert rows(fresh, "SELECT released_at IS NOT NULL FROM quarantine "
                       "WHERE location = 'ticket:D-1'") == [(True,)]

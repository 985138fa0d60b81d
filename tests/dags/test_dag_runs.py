"""Every DAG runs green with ``dag.test()`` against the real embedded PostgreSQL.

The lifecycle runs in production order: ingest -> prepare -> retrain -> retention (``run_dag``
runs the earlier DAGs first when a test is selected alone); each test checks what its run
left in the database, not only that Airflow marked it a success.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from cca.store import Database
from tests.conftest import FIXTURES
from tests.dags.conftest import SETTINGS, task_states, xcom

pytestmark = pytest.mark.integration

with open(FIXTURES / "service_desk.csv", newline="", encoding="utf-8") as f:
    FIXTURE_IDS = {row["ticket_id"] for row in csv.DictReader(f)}


def scalar(db: Database, sql: str, **params: Any) -> Any:
    with db.begin() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def asset_events(uri: str) -> list[tuple[str, str]]:
    """(source DAG, source task) of each event recorded for ``uri`` in the metadata DB."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(
            sa.select(AssetEvent.source_dag_id, AssetEvent.source_task_id)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == uri))
        return [tuple(r) for r in rows]


def assert_green(dag_run: Any) -> None:
    states = task_states(dag_run)
    assert str(dag_run.state) == "success", f"{dag_run.dag_id}: {states}"
    assert set(states.values()) == {"success"}, states


def test_ingest_tickets(run_dag: Callable[[str], Any], lifecycle_db: Database) -> None:
    dag_run = run_dag("ingest_tickets")
    assert_green(dag_run)
    inbox = xcom(dag_run, "ingest_inbox")
    assert (inbox["files"], inbox["failed_files"]) == (1, 0)
    assert inbox["tickets_new"] == len(FIXTURE_IDS) == 48
    assert xcom(dag_run, "ingest_connectors") == {"connectors": []}  # none configured
    assert scalar(lifecycle_db, "SELECT count(*) FROM tickets") == 48
    assert scalar(lifecycle_db, "SELECT count(*) FROM ticket_labels WHERE validated") == 48
    assert scalar(lifecycle_db, "SELECT count(*) FROM ingested_files") == 1
    assert not list(SETTINGS.inbox.glob("*.csv"))  # moved to processed/<day>/
    assert list(SETTINGS.inbox.glob("processed/*/service_desk.csv"))
    assert sorted(asset_events("cca://tickets/raw")) == [
        ("ingest_tickets", "ingest_connectors"), ("ingest_tickets", "ingest_inbox")]


def test_prepare_tickets(run_dag: Callable[[str], Any], lifecycle_db: Database) -> None:
    dag_run = run_dag("prepare_tickets")
    assert_green(dag_run)
    assert xcom(dag_run, "sanitize")["sanitized"] == 48
    assert xcom(dag_run, "validate")["checked"] == 48
    pending = scalar(lifecycle_db, """
        SELECT count(*) FROM tickets WHERE sanitized_for IS DISTINCT FROM content_hash
            OR dedup_for IS DISTINCT FROM clean_hash OR checked_for IS DISTINCT FROM clean_hash
            OR clean_body IS NULL""")
    assert pending == 0
    originals = scalar(lifecycle_db, "SELECT count(*) FROM tickets WHERE duplicate_of IS NULL")
    assert originals == 48 - xcom(dag_run, "dedup")["duplicates"] > 0
    models = xcom(dag_run, "index")["models"]
    assert len(models) == 2  # the cache's static vectors and the deep model's
    for model in models:
        stored = scalar(lifecycle_db, "SELECT count(*) FROM ticket_embeddings "
                        "WHERE model_id = :m", m=model["model_id"])
        assert stored == model["embedded"] == originals
    assert asset_events("cca://tickets/clean") == [("prepare_tickets", "index")]


def test_weekly_retrain(run_dag: Callable[[str], Any], lifecycle_db: Database) -> None:
    from training import registry, tracking

    dag_run = run_dag("weekly_retrain")
    assert_green(dag_run)
    decision = xcom(dag_run, "promote")
    version = decision["model_version"]
    assert decision["bundle_version"] == xcom(dag_run, "train")["bundle_version"]
    assert (SETTINGS.models_dir / decision["bundle_version"] / "bundle.json").exists()
    actions = [e.action for e in registry.events(lifecycle_db, SETTINGS.registered_model,
                                                 version=version)]
    assert actions == ["register", "promote" if decision["promoted"] else "gate-refused"]
    with tracking.mlflow_session(SETTINGS, "test") as client:
        champion = registry.champion(client, SETTINGS.registered_model)
    # A fresh registry has no champion, so the first candidate is held only to the
    # macro-F1 floor, which the fixture's four well-separated intents clear.
    assert decision["promoted"], decision["reasons"]
    assert champion is not None and str(champion.version) == version
    assert (SETTINGS.models_dir / "CURRENT").read_text().strip() == decision["bundle_version"]
    assert asset_events("cca://models/champion") == [("weekly_retrain", "promote")]


def test_retention(run_dag: Callable[[str], Any], lifecycle_db: Database) -> None:
    run_dag("weekly_retrain")  # so the model history exists and must survive
    old_text, old_vectors = sorted(FIXTURE_IDS)[:5], sorted(FIXTURE_IDS)[5:8]
    with lifecycle_db.begin() as conn:
        conn.execute(sa.text("UPDATE tickets SET created_at = now() - interval '100 days' "
                             "WHERE id LIKE '%' || :id"), [{"id": i} for i in old_text])
        conn.execute(sa.text("UPDATE ticket_embeddings SET created_at = now() - "
                             "interval '800 days' WHERE ticket_id LIKE '%' || :id"),
                     [{"id": i} for i in old_vectors])
    expired_vectors = scalar(lifecycle_db, "SELECT count(*) FROM ticket_embeddings "
                             "WHERE created_at < now() - interval '730 days'")
    vectors = scalar(lifecycle_db, "SELECT count(*) FROM ticket_embeddings")
    events = scalar(lifecycle_db, "SELECT count(*) FROM model_events")
    assert expired_vectors > 0 and events > 0

    dag_run = run_dag("retention")
    assert_green(dag_run)
    report = xcom(dag_run, "purge_expired")
    assert report["raw_text_purged"] == len(old_text)
    assert report["embeddings_deleted"] == expired_vectors
    assert scalar(lifecycle_db, "SELECT count(*) FROM ticket_embeddings") == (
        vectors - expired_vectors)
    purged = scalar(lifecycle_db, """
        SELECT count(*) FROM tickets WHERE raw_purged_at IS NOT NULL AND body = ''
            AND subject = '' AND clean_body <> ''""")
    assert purged == len(old_text)  # raw text gone, the redacted text kept
    assert scalar(lifecycle_db, "SELECT count(*) FROM tickets WHERE body <> ''") == 48 - purged
    assert scalar(lifecycle_db, "SELECT count(*) FROM ticket_labels") == 48
    assert scalar(lifecycle_db, "SELECT count(*) FROM model_events") == events

"""Canary PII through the Airflow DAGs (``dag.test()``), then a search of what they left.

After the lifecycle has run once on the fixture (``run_dag``, shared with test_dag_runs.py;
this file sorts after it, so its extra runs do not change what that file counts), a file of
canary tickets (tests/pii_canary.py), with records ingest refuses and one the raw tickets
suite refuses, is dropped in the inbox, and ``ingest_tickets``, ``prepare_tickets`` and
``weekly_retrain`` run again. Then: every line the task runs logged or printed (captured at
the file descriptors, plus every log record), every file under ``CCA_HOME`` (Airflow's home
with its task logs and metadata database holding the XComs, Data Docs, the MLflow store and
artifacts, models), and every MLflow run through the client API hold none of the canaries.
The ticket file itself (the input, kept in ``inbox/processed/`` until retention) and
PostgreSQL's raw-text columns are not searched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cca.store import Database
from tests import pii_canary as canary
from tests.dags.conftest import SETTINGS, task_states, xcom

# Three more DAG runs after the lifecycle's first: minutes on a loaded machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

FUTURE = "2099-01-01T09:00:00+00:00"


class _Records(logging.Handler):
    """Every record any logger emits while the DAGs run, formatted with its arguments."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(f"{record.name} {record.getMessage()} {record.__dict__}")
        except Exception:  # a record that cannot format is not ours to judge
            self.lines.append(f"{record.name} {record.msg!r} {record.args!r}")


def _canary_file() -> Path:
    rows = ["ticket_id,subject,message,intent,priority,created_at"]
    for i, (subject, body, label) in enumerate(canary.canary_texts()):
        rows.append(f'CANARY-{i},"{subject}","{body}",{label},normal,')
    rows += [
        f'CANARY-BAD-1,"{canary.PERSON} {canary.PHONE}",,billing_question,normal,',
        f'CANARY-BAD-2,Invoice,"Card {canary.CARD} charged twice",billing_question,'
        f'{canary.EMAIL},',
        f'CANARY-FUTURE,Invoice,"I am {canary.PERSON}, IBAN {canary.IBAN}, my invoice is '
        f'wrong",billing_question,normal,{FUTURE}',
    ]
    SETTINGS.inbox.mkdir(parents=True, exist_ok=True)
    path = SETTINGS.inbox / "canary_tickets.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _run_again(dag_ids: tuple[str, ...]) -> dict[str, Any]:
    """A second run of each DAG on a fresh parse (retries off, as ``run_dag`` does)."""
    from airflow.dag_processing.dagbag import BundleDagBag

    from cli.airflow_env import DAGS_FOLDER

    bag = BundleDagBag(dag_folder=DAGS_FOLDER, bundle_path=DAGS_FOLDER,
                       bundle_name="dags-folder")
    runs = {}
    for dag_id in dag_ids:
        dag = bag.dags[dag_id]
        for task in dag.tasks:
            task.retries = 0
        runs[dag_id] = dag.test()
        states = task_states(runs[dag_id])
        assert set(states.values()) == {"success"}, (dag_id, states)
    return runs


def test_dag_runs_leave_no_canary(run_dag: Callable[[str], Any], lifecycle_db: Database,
                                  capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run_dag("retention")  # the lifecycle once on the fixture (and its model history)
    source = _canary_file()
    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        runs = _run_again(("ingest_tickets", "prepare_tickets", "weekly_retrain"))
    finally:
        logging.getLogger().removeHandler(records)
    out, err = capfd.readouterr()
    inbox = xcom(runs["ingest_tickets"], "ingest_inbox")
    assert (inbox["tickets_new"], inbox["quarantined"]) == (7, 2), inbox
    assert xcom(runs["prepare_tickets"], "validate")["quarantined"] == 1  # CANARY-FUTURE
    assert xcom(runs["weekly_retrain"], "train")["bundle_version"]

    inputs = [p for p in SETTINGS.inbox.rglob(source.name)]
    files = canary.walk(SETTINGS.home, skip=[SETTINGS.pgdata, *inputs])
    written = {p.relative_to(SETTINGS.home).parts[0] for p in files}
    assert {"airflow", "great_expectations", "mlflow", "models"} <= written, written
    task_logs = [p for p in files if SETTINGS.airflow_home / "logs" in p.parents]
    print(f"{len(files)} files scanned, {len(task_logs)} Airflow task logs, "
          f"{len(records.lines)} log records, {len(out) + len(err)} characters of output")
    mlflow_hits, mlflow_runs = canary.scan_mlflow(SETTINGS.tracking_uri, tmp_path)
    assert mlflow_runs >= 2
    hits = (canary.find("captured stdout", out) + canary.find("captured stderr", err)
            + canary.find("log records", "\n".join(records.lines))
            + canary.scan_files(files) + mlflow_hits)
    assert not hits, canary.report(hits)

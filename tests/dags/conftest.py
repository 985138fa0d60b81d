"""Airflow for the DAG tests, under one throwaway ``CCA_HOME`` per session.

Airflow reads ``AIRFLOW_HOME`` and its ``AIRFLOW__*`` variables once, when it is first
imported, so they are set here, while pytest collects this folder and before any test
imports Airflow: its home is ``CCA_HOME/airflow`` (``Settings.airflow_home``) and its metadata
database a SQLite file there, migrated once per session. The tasks themselves run inside the
test process (``dag.test()``) against the project's embedded PostgreSQL under the same home.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cca.settings import Settings, get_settings
from cca.store import Database, open_database
from cli.airflow_env import DAGS_FOLDER, airflow_env
from tests.conftest import FIXTURES

HOME = Path(tempfile.mkdtemp(prefix="cca-dags-"))
atexit.register(shutil.rmtree, HOME, True)  # runs after the embedded server's own atexit stop
SETTINGS = Settings(
    home=HOME,
    rules_path=FIXTURES / "service_desk_rules.yaml",
    department_map=FIXTURES / "service_desk_departments.yaml",
)

if "airflow" in sys.modules:  # too late: Airflow has read its home already
    raise pytest.UsageError(
        "tests/dags must be collected before anything imports airflow "
        f"(imported from {sys.modules['airflow'].__file__})"
    )
os.environ.update({k: v for k, v in airflow_env(SETTINGS, base={}).items()
                   if k.startswith("AIRFLOW")})
_ROOT_HANDLERS = list(logging.root.handlers)  # before Airflow adds its own

# The lifecycle, in the order production runs it; each DAG's run needs the ones before it.
ORDER = ("ingest_tickets", "prepare_tickets", "weekly_retrain", "retention")
SECONDS: dict[str, float] = {}  # measured, printed at the end of the session


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SECONDS:
        terminalreporter.write_line("airflow: " + ", ".join(
            f"{name} {seconds:.1f} s" for name, seconds in SECONDS.items()))


@pytest.fixture(scope="package", autouse=True)
def _detach_airflow_log_handlers() -> Iterator[None]:
    """Airflow's logging setup (on first import) binds a handler to the stdout pytest captures;
    drop it when this package is done, or logging at interpreter exit hits a closed file."""
    yield
    for handler in logging.root.handlers[:]:
        if type(handler) is logging.StreamHandler and handler not in _ROOT_HANDLERS:
            logging.root.removeHandler(handler)


@pytest.fixture(scope="session")
def dagbag() -> Any:
    """The repo's ``dags/`` parsed as the dag-processor parses its bundle (no examples)."""
    from airflow.dag_processing.dagbag import BundleDagBag

    return BundleDagBag(dag_folder=DAGS_FOLDER, bundle_path=DAGS_FOLDER,
                        bundle_name="dags-folder")


@pytest.fixture(scope="session")
def airflow_db() -> float:
    """``airflow db migrate`` (in process) on the session's SQLite file; returns seconds."""
    from airflow.utils.db import upgradedb

    started = time.perf_counter()
    upgradedb()
    SECONDS["db migrate"] = time.perf_counter() - started
    return SECONDS["db migrate"]


@pytest.fixture(scope="package")
def lifecycle_db() -> Iterator[Database]:
    """The embedded PostgreSQL the tasks use, with ``CCA_*`` pointing every task at it.

    Package scope: the variables and ``get_settings``' cache are restored before the rest of
    the suite runs.
    """
    env = {"CCA_HOME": str(SETTINGS.home), "CCA_RULES_PATH": str(SETTINGS.rules_path),
           "CCA_DEPARTMENT_MAP": str(SETTINGS.department_map)}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        get_settings.cache_clear()
        assert get_settings().home == SETTINGS.home
        db = open_database(SETTINGS)  # started here, so every task reuses this server
        yield db
        db.dispose()
    get_settings.cache_clear()


def drop_in_inbox(source: Path, columns: dict[str, str] | None = None) -> Path:
    """Copy a ticket file into the inbox; ``columns`` writes a ``.columns.yaml`` sidecar.

    Without a sidecar ingest finds the columns by their canonical names, which
    ``service_desk.csv`` uses (ticket_id, subject, message, intent, priority).
    """
    SETTINGS.inbox.mkdir(parents=True, exist_ok=True)
    target = Path(shutil.copy(source, SETTINGS.inbox / source.name))
    if columns is not None:
        import yaml

        sidecar = target.with_name(target.name + ".columns.yaml")
        sidecar.write_text(yaml.safe_dump(columns), encoding="utf-8")
    return target


@pytest.fixture(scope="package")
def run_dag(airflow_db: float, lifecycle_db: Database) -> Callable[[str], Any]:
    """``run_dag(dag_id)``: one ``dag.test()`` run per DAG, earlier DAGs first.

    Retries are switched off for the run (on a fresh parse, not the ``dagbag`` fixture's), so
    a failing task fails the run at once instead of after ``retry_delay`` x retries.
    """
    from airflow.dag_processing.dagbag import BundleDagBag

    bag = BundleDagBag(dag_folder=DAGS_FOLDER, bundle_path=DAGS_FOLDER,
                       bundle_name="dags-folder")
    runs: dict[str, Any] = {}

    def run(dag_id: str) -> Any:
        for earlier in ORDER[: ORDER.index(dag_id)]:
            if earlier not in runs:
                run(earlier)
        if dag_id not in runs:
            dag = bag.dags[dag_id]
            for task in dag.tasks:
                task.retries = 0
            if dag_id == "ingest_tickets":
                drop_in_inbox(FIXTURES / "service_desk.csv")
            started = time.perf_counter()
            runs[dag_id] = dag.test()
            SECONDS[f"{dag_id}.test()"] = time.perf_counter() - started
        return runs[dag_id]

    return run


def task_states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def xcom(dag_run: Any, task_id: str) -> Any:
    """What a task returned (its XCom), read back from the metadata database."""
    ti = dag_run.get_task_instance(task_id)
    return ti.xcom_pull(task_ids=task_id, run_id=dag_run.run_id)

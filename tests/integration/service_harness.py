"""Run the real BentoML service in-process (``CallCentreAgent.to_asgi()``) on its own home.

The home gets the fixture tickets, a model trained and promoted to ``@champion`` through the
MLflow registry (the path ``cca serve`` loads from), and the embedded PostgreSQL. Each
``service()`` block starts the service with the given ``CCA_*`` settings (its own lifespan:
models, spool, Redis clients) and stops it at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from starlette.testclient import TestClient

from cca.settings import Settings
from tests.conftest import FIXTURES

BASE_ENV = {
    "CCA_RULES_PATH": str(FIXTURES / "service_desk_rules.yaml"),
    "CCA_DEPARTMENT_MAP": str(FIXTURES / "service_desk_departments.yaml"),
    "CCA_NO_PROGRESS": "1",
    "CCA_PER_CLASS_THRESHOLDS": "false",  # see tests/conftest.py
}


def home_settings(home: Path) -> Settings:
    """The settings ``prepare_home`` trains with (fixture rules and departments)."""
    return Settings(home=home, rules_path=FIXTURES / "service_desk_rules.yaml",
                    department_map=FIXTURES / "service_desk_departments.yaml",
                    redis_url="redis://127.0.0.1:6379/0")


def prepare_home(home: Path) -> Settings:
    """Import, prepare, retrain and promote on the fixture tickets; returns the settings."""
    import sqlalchemy as sa

    from cca.departments import load_department_map
    from cca.store import open_database
    from pipelines.import_tickets import import_parsed
    from pipelines.lifecycle import prepare
    from pipelines.read_tickets import Columns, read_ticket_file
    from training.steps import retrain

    settings = home_settings(home)
    db = open_database(settings)
    try:
        cols = Columns(text="message", label="intent", id="ticket_id", subject="subject",
                       priority="priority")
        depts = load_department_map(settings.department_map)
        import_parsed(db, read_ticket_file(FIXTURES / "service_desk.csv", cols), depts)
        prepare(settings, db)
        result = retrain(settings, db)
        assert result["promoted"], result
        with db.begin() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM tickets")).scalar_one() == 48
    finally:
        db.dispose()
    return settings


@contextmanager
def service(home: Path, **env: str) -> Iterator[TestClient]:
    """The service on ``home`` with extra ``CCA_*`` settings, as an HTTP test client."""
    wanted = {**BASE_ENV, "CCA_HOME": str(home),
              "BENTOML_HOME": str(home / "bentoml"),
              "PROMETHEUS_MULTIPROC_DIR": str(_prom_dir(home)), **env}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        from serving.service import CallCentreAgent

        _forget_bentoml_metrics()
        with TestClient(CallCentreAgent.to_asgi(), raise_server_exceptions=False) as client:
            yield client
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _forget_bentoml_metrics() -> None:
    """BentoML registers its HTTP metrics in the global registry once per app; a real server
    builds one app per process, these tests build several in one process."""
    from prometheus_client import REGISTRY

    for collector, names in list(REGISTRY._collector_to_names.items()):
        if any(n.startswith("bentoml_") for n in names):
            REGISTRY.unregister(collector)


def _prom_dir(home: Path) -> Path:
    path = home / "prometheus"
    path.mkdir(parents=True, exist_ok=True)
    return path


def token(home: Path, *scopes: str, subject: str = "tester") -> dict[str, str]:
    """An Authorization header signed with the home's development secret."""
    from serving.auth import mint_token

    settings = Settings(home=home)
    return {"Authorization": f"Bearer {mint_token(settings, list(scopes), subject)}"}


def ticket(body: str, **fields: object) -> dict:
    return {"ticket": {"id": fields.pop("id", f"t-{uuid.uuid4().hex[:12]}"), "body": body,
                       **fields}}


def rows(home: Path, sql: str, **params: object) -> list[dict]:
    """The rows of ``sql`` in the home's database, as dicts."""
    import sqlalchemy as sa

    from cca.store import open_database

    db = open_database(Settings(home=home))
    try:
        with db.begin() as conn:
            return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]
    finally:
        db.dispose()

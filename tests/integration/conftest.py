"""One embedded PostgreSQL (pgvector) per test session, under a throwaway CCA_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cascade.llm_local import LocalLLMServer
from cca.settings import Settings
from cca.store import Database, open_database
from tests.conftest import FIXTURES, ROOT


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cca")


@pytest.fixture(scope="session")
def settings(home: Path) -> Settings:
    return Settings(
        home=home,
        rules_path=FIXTURES / "service_desk_rules.yaml",
        department_map=FIXTURES / "service_desk_departments.yaml",
        per_class_thresholds=False,  # see tests/conftest.py
    )


@pytest.fixture(scope="session")
def db(settings: Settings) -> Iterator[Database]:
    database = open_database(settings)
    yield database
    database.dispose()


@pytest.fixture
def clean_db(db: Database) -> Database:
    """Empty every table a test may fill (the decision audit is append-only and stays)."""
    with db.begin() as conn:
        conn.execute(sa.text(
            "TRUNCATE tickets, ticket_labels, ticket_embeddings, cache_track_record CASCADE"))
    return db


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCA_")}
    env.update({
        "CCA_HOME": str(settings.home),
        "CCA_RULES_PATH": str(settings.rules_path),
        "CCA_DEPARTMENT_MAP": str(settings.department_map),
        "CCA_NO_PROGRESS": "1",
        "CCA_PER_CLASS_THRESHOLDS": str(settings.per_class_thresholds).lower(),
        "COLUMNS": "200",
    })
    env.update(extra)
    return env


def run_cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=ROOT, env=cli_env(settings, **env), capture_output=True, text=True, timeout=600,
    )


@pytest.fixture(scope="session")
def service_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with the fixture tickets and a promoted @champion, shared by the service tests
    (each module starts its own service on it; one service at a time owns its spool)."""
    from tests.integration.service_harness import prepare_home

    return prepare_home(tmp_path_factory.mktemp("svc")).home


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLLMServer]:
    """The local llama.cpp server (Qwen2.5-Coder-0.5B) on a free port under its own home,
    shared by the session; ``base_url`` and ``model_name`` point an OpenAI client at it."""
    from tests.integration.llm_server import local_llm_server

    with local_llm_server(tmp_path_factory.mktemp("llm")) as server:
        yield server

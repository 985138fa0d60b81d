"""Banking77 trained once per session through the same pipeline functions as `cca run`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cca.cascade import Cascade
from cca.departments import load_department_map
from cca.embeddings import get_deep_embedder, get_embedder
from cca.settings import Settings
from cca.store import open_database
from pipelines.import_tickets import import_parsed
from pipelines.index_tickets import index_labelled_tickets
from pipelines.read_tickets import Columns, read_ticket_file
from tests.conftest import BANKING77, ROOT
from training.train_classifier import train_from_store

COLS = Columns(text="text", label="category")


@pytest.fixture(scope="session")
def banking_cascade(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cascade]:
    settings = Settings(home=tmp_path_factory.mktemp("banking"),
                        department_map=ROOT / "rules" / "departments" / "banking77.yaml")
    db = open_database(settings)
    departments = load_department_map(settings.department_map)
    import_parsed(db, read_ticket_file(BANKING77 / "train.csv", COLS, source="b77-train"),
                  departments)
    embedder, deep = get_embedder(settings), get_deep_embedder(settings)
    index_labelled_tickets(db, embedder)
    index_labelled_tickets(db, deep, hnsw=False)
    train_from_store(settings, db, embedder, departments.mapping, deep_embedder=deep)
    yield Cascade.load(settings, db)
    db.dispose()

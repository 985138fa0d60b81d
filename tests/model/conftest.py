"""Banking77 trained once per session through the same pipeline functions as `cca run`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cascade.cascade import Cascade
from cca.departments import load_department_map
from cca.settings import Settings
from cca.store import open_database
from pipelines.import_tickets import import_parsed
from pipelines.lifecycle import prepare
from pipelines.read_tickets import Columns, read_ticket_file
from tests.conftest import BANKING77, ROOT
from training.steps import retrain

COLS = Columns(text="text", label="category")


@pytest.fixture(scope="session")
def banking_cascade(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cascade]:
    settings = Settings(home=tmp_path_factory.mktemp("banking"),
                        department_map=ROOT / "rules" / "departments" / "banking77.yaml",
                        per_class_thresholds=True)
    db = open_database(settings)
    departments = load_department_map(settings.department_map)
    import_parsed(db, read_ticket_file(BANKING77 / "train.csv", COLS, source="b77-train"),
                  departments)
    prepare(settings, db)
    result = retrain(settings, db)
    assert result["promoted"], result["reasons"]
    yield Cascade.load(settings, db)
    db.dispose()

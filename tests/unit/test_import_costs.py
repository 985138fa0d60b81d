"""What importing an entry point loads: `cca --help` and each Airflow task start a fresh
interpreter, so a heavy library imported at module level is paid by every command and task
(docs/ARCHITECTURE.md: imports inside functions defer heavy dependencies)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("httpx", "tenacity", "sqlalchemy", "numpy", "pandas", "sklearn", "onnxruntime",
         "tokenizers", "datasketch", "spacy", "great_expectations", "mlflow", "bentoml",
         "openai", "redaction", "cascade.cascade")


def _loaded_after(module: str) -> list[str]:
    code = (f"import json, sys; import {module}; "
            f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout)


def test_the_cca_command_loads_no_heavy_library() -> None:
    assert _loaded_after("cli.main") == []


@pytest.mark.parametrize(("module", "allowed"), [
    # every lifecycle task imports this module; each step imports its own dependencies
    ("pipelines.lifecycle", {"sqlalchemy"}),
])
def test_lifecycle_tasks_load_only_the_store(module: str, allowed: set[str]) -> None:
    assert set(_loaded_after(module)) <= allowed

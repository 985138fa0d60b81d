"""The MLflow UI as a data scientist opens it: a real `mlflow ui` (what `make mlflow-ui` runs)
on a home with a promoted version, then a refused one, rendered by headless Chromium.

The UI is a JavaScript app, so the pages are read from the DOM Chromium builds (``--dump-dom``
after a virtual-time budget), not from the HTML the server sends: what is asserted here is
what a person sees. Chromium is Debian's package, installed by ``make browser`` (which
``make test`` runs); the test installs it the same way when missing and, only where it
cannot (not root, no apt-get), skips saying why; in CI a missing Chromium fails.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from cca.settings import Settings
from tests.conftest import ROOT, require
from tests.integration.test_retrain import load_fixture, module_settings
from tests.servers import free_port
from training import steps

MODEL = "cca-test-ui"


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        subprocess.run(["make", "--no-print-directory", "browser"], cwd=ROOT, timeout=900,
                       capture_output=True, text=True)
        found = shutil.which("chromium")
    require(found is not None, "headless Chromium is not installed and `make browser` could "
            "not install it (it needs root and apt-get): the MLflow UI cannot be rendered")
    return found


@pytest.fixture(scope="module")
def s(settings, db, tmp_path_factory) -> Settings:
    return module_settings(settings, db, tmp_path_factory.mktemp("ui"), registered_model=MODEL)


@pytest.fixture(scope="module")
def first(s, db) -> dict:
    """v1, promoted by the gate: @champion and @challenger both name it."""
    load_fixture(s, db)
    result = steps.retrain(s, db)
    assert result["promoted"], result
    return result


@pytest.fixture(scope="module")
def ui(s, first) -> Iterator[str]:
    """`mlflow ui` as the Makefile starts it, on this home's store; its base URL."""
    port = free_port()
    store = f"sqlite:///{s.mlflow_dir / 'mlflow.db'}"
    log = open(s.home / "mlflow-ui.log", "w")  # noqa: SIM115 - closed after the server
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", store,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (s.home / "mlflow-ui.log").read_text()[-2000:]
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("mlflow ui did not answer /health within 120 s")
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server, its uvicorn worker, its job runner
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def rendered(chromium: str, url: str, profile: Path) -> str:
    """The page's visible text once the app has loaded its data (tags and styles dropped)."""
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
         "--dump-dom", "--virtual-time-budget=15000", url],
        capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    dom = re.sub(r"<(style|script)\b.*?</\1>", " ", out.stdout, flags=re.S)
    text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))
    return re.sub(r" ([),.:;])", r"\1", text)  # no space where an element ended before it


def test_the_ui_shows_classes_gate_decisions_and_both_aliases(s, db, first, ui, chromium,
                                                               tmp_path):
    profile = tmp_path / "profile"
    # after a promotion, the promoted version carries both aliases
    model = rendered(chromium, f"{ui}/#/models/{MODEL}", profile)
    assert re.search(r"Version 1 .*?@ ?challenger", model), model[:3000]
    assert re.search(r"Version 1 .*?@ ?champion", model), model[:3000]
    assert "@challenger is the latest registered candidate" in model

    second = steps.retrain(s.model_copy(update={"promotion_min_macro_f1": 1.01}), db)
    assert not second["promoted"] and second["model_version"] == "2", second
    client = MlflowClient(s.tracking_uri, s.tracking_uri)
    experiment = client.get_run(second["run_id"]).info.experiment_id
    run_page = f"{ui}/#/experiments/{experiment}/runs/{second['run_id']}"
    classes = sorted(set(first["holdout_labels"]))

    # the refused candidate's run: why it was refused, against which champion, at what floor
    run = rendered(chromium, run_page, profile)
    assert "Promotion gate: refused (v2 stays @challenger" in run, run[:3000]
    assert "refused because: macro-F1" in run and "< required 1.0100" in run
    assert "champion v1 on the same holdout" in run
    for tag in ("gate.decision: refused", "gate.min_macro_f1: 1.01",
                "gate.champion_version: 1", "gate.worst_class:"):
        assert tag in run, tag

    # its logged model: the holdout metrics are linked to the holdout dataset
    logged = rendered(chromium, f"{ui}/#/experiments/{experiment}/models/{second['model_id']}",
                      profile)
    assert "Datasets used" in logged, logged[:3000]
    assert "tickets-holdout-" in logged[logged.index("Datasets used"):], logged[:3000]

    # its per-class report: a table with a class column and only classes as rows
    report = rendered(chromium, f"{run_page}/artifacts/evaluation/per_class_report.csv",
                      profile)
    header = re.search(r"class precision recall f1 support threshold .*? status", report)
    assert header, report[:3000]
    table = report[header.end():]
    assert all(name in table for name in classes), (classes, table[:1000])
    assert "macro avg" not in report and "weighted avg" not in report
    assert {"per_class.png", "summary.csv", "confusion_matrix.png"} <= set(report.split())

    # the promoted version's run says it passed
    passed = rendered(chromium, f"{ui}/#/experiments/{experiment}/runs/{first['run_id']}",
                      profile)
    assert "Promotion gate: passed (v1 became @champion)" in passed
    assert "gate.decision: passed" in passed

    # the registered model now: the refused v2 is @challenger, v1 stays @champion
    model = rendered(chromium, f"{ui}/#/models/{MODEL}", profile)
    versions_table = model[model.index("Version 2"):]
    assert re.search(r"Version 2 .*?@ ?challenger .*?Version 1 .*?@ ?champion",
                     versions_table), versions_table[:3000]
    assert "gate.decision: refused" in versions_table
    assert "gate.decision: passed" in versions_table[versions_table.index("Version 1"):]

"""``cca llm calibrate`` against the fake OpenAI endpoint, then the cascade behind the rule.

The fake answers every ticket with one label, so a calibration file decides the measured
precision: all tickets of that label make a cell that routes; half of them make a cell that
only suggests. The target is lowered to 70 % so a few dozen tickets can clear it (at 98 %
a cell needs 183 right answers in a row).
"""

from __future__ import annotations

import csv
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cascade.cascade import Cascade
from cascade.llm_acceptance import endpoint_key
from cca.settings import Settings
from cca.store import Database, open_database
from cca.store.audit import append_decisions, last_decision
from cca.store.llm_rules_repo import latest_rule
from cca.store.tickets_repo import upsert_tickets
from cca.tickets import Ticket
from tests.conftest import FIXTURES
from tests.fake_openai import FakeOpenAI
from tests.integration.conftest import run_cli
from tests.integration.service_harness import home_settings

SAID = "billing_question"  # what the fake answers, always
OTHER = "cancel_subscription"
TARGET = "0.7"
CALIBRATION_ENV = {"CCA_LLM_MIN_TOP_PROBABILITY": "0", "CCA_CLASSIFIER_TARGET_PRECISION": TARGET}


@pytest.fixture(scope="module")
def home(service_home: Path) -> Settings:
    return home_settings(service_home)


@pytest.fixture(scope="module")
def db(home: Settings) -> Iterator[Database]:
    database = open_database(home)
    yield database
    database.dispose()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


UNSURE = "zxqv blorp"  # no rule, cache entry or classifier is sure about it


def _tickets(n: int) -> list[tuple[str, str]]:
    """(id, text): the same text under ids new to every session, so every answer falls in
    the same cell."""
    return [(f"cal-{uuid.uuid4().hex[:10]}", UNSURE) for _ in range(n)]


def _new() -> Ticket:
    return Ticket(id=f"new-{uuid.uuid4().hex[:10]}", body=UNSURE)


def _write(path: Path, tickets: list[tuple[str, str]], labels: list[str]) -> Path:
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["ticket_id", "text", "label"])
        out.writerows((tid, text, label)
                      for (tid, text), label in zip(tickets, labels, strict=True))
    return path


def _calibrate(home: Settings, fake: FakeOpenAI, model: str, data: Path, tmp_path: Path,
               *args: str):
    report = tmp_path / f"{model}.json"
    result = run_cli(home, "llm", "calibrate", "--data", str(data), "--json", str(report),
                     *args, CCA_LLM_BASE_URL=fake.base_url, CCA_LLM_MODEL=model,
                     **CALIBRATION_ENV)
    return result, (json.loads(report.read_text()) if report.exists() else None)


def _cascade(home: Settings, db: Database, fake: FakeOpenAI, model: str) -> Cascade:
    s = home.model_copy(update={"llm_base_url": fake.base_url, "llm_model": model,
                                "llm_min_top_probability": 0.0,
                                "classifier_target_precision": float(TARGET)})
    return Cascade.load(s, db)


@pytest.fixture(scope="module")
def calibrated(home, fake, tmp_path_factory) -> tuple[str, dict, str]:
    """A model calibrated on 30 tickets it answers right: (model, report, stdout)."""
    model = f"calibrated-{uuid.uuid4().hex[:6]}"
    tmp = tmp_path_factory.mktemp("calibrated")
    data = _write(tmp / "cal.csv", _tickets(30), [SAID] * 30)
    hits = fake.hits
    result, report = _calibrate(home, fake, model, data, tmp, "--id-col", "ticket_id")
    assert result.returncode == 0, result.stderr
    assert fake.hits - hits == 30  # every ticket passed on was asked once
    return model, report, result.stdout


def test_a_calibrated_cell_routes_and_an_uncalibrated_endpoint_only_suggests(
        home, db, fake, calibrated):
    model, report, stdout = calibrated
    assert (report["passed_on"], report["asked"], report["answered"]) == (30, 30, 30)
    assert report["overall_precision"] == 1.0 and report["left_out_in_store"] == 0
    assert report["created_at"] and report["bundle_version"].startswith("clf-")
    assert report["accepted_cells"] == 1 and report["llm_calibrated_precision"] == 1.0
    assert "precision by cell" in stdout and f"stored rule {report['rule_id']}" in stdout
    with db.begin() as conn:
        stored = latest_rule(conn, endpoint_key(fake.base_url), model)
    assert stored is not None and stored.id == report["rule_id"]
    assert (stored.sample_size, stored.answered, stored.overall_precision) == (30, 30, 1.0)

    routed = _cascade(home, db, fake, model).classify(_new())
    assert (routed.stage, routed.label, routed.suggestion) == ("llm", SAID, None)
    assert routed.reason == "asks about a charge"

    ticket = _new()
    other_model = _cascade(home, db, fake, f"never-calibrated-{uuid.uuid4().hex[:6]}")
    suggested = other_model.classify(ticket)
    assert (suggested.stage, suggested.label) == ("review", None)
    assert (suggested.suggestion, suggested.suggestion_confidence) == (SAID, 0.9)
    assert "LLM endpoint not calibrated: suggestion only" in suggested.reason
    assert suggested.cost_usd == routed.cost_usd  # the call was made and paid for
    with db.begin() as conn:  # the audit keeps the suggestion beside the review
        upsert_tickets(conn, [ticket])
        append_decisions(conn, [(ticket, suggested)])
        logged = last_decision(conn, ticket.id)
    assert logged is not None and logged.label is None
    assert (logged.details["suggestion"], logged.details["suggestion_confidence"]) == (SAID, 0.9)


def test_a_cell_measured_below_target_only_suggests_until_a_new_calibration(
        home, db, fake, tmp_path):
    model = f"half-right-{uuid.uuid4().hex[:6]}"
    half = _write(tmp_path / "half.csv", _tickets(30), [SAID, OTHER] * 15)
    result, report = _calibrate(home, fake, model, half, tmp_path, "--id-col", "ticket_id")
    assert result.returncode == 0, result.stderr
    assert report["overall_precision"] == 0.5 and report["accepted_cells"] == 0
    assert report["llm_calibrated_precision"] is None
    assert "no cell reaches 70%: the LLM only suggests" in result.stdout

    decision = _cascade(home, db, fake, model).classify(_new())
    assert (decision.stage, decision.label, decision.suggestion) == ("review", None, SAID)
    assert re.search(r"; LLM answer in a cell measured at 50% \(15/30, at least 3\d% at 95% "
                     r"confidence\) < 70%$", decision.reason), decision.reason

    # The newest calibration of an endpoint and model is the one in force.
    right = _write(tmp_path / "right.csv", _tickets(30), [SAID] * 30)
    result, report = _calibrate(home, fake, model, right, tmp_path, "--id-col", "ticket_id")
    assert result.returncode == 0 and report["accepted_cells"] >= 1, result.stderr
    decision = _cascade(home, db, fake, model).classify(_new())
    assert (decision.stage, decision.label) == ("llm", SAID)


def test_calibration_leaves_out_tickets_the_store_holds(home, fake, tmp_path):
    """The fixture tickets are the model's training data: their own labelled copies would
    answer them in the cache, so they say nothing about the LLM."""
    result, report = _calibrate(home, fake, f"m-{uuid.uuid4().hex[:6]}",
                                FIXTURES / "service_desk.csv", tmp_path, "--text-col",
                                "message", "--label-col", "intent", "--id-col", "ticket_id")
    assert result.returncode != 0 and report is None
    assert "Traceback" not in result.stderr
    assert "already in the store" in result.stderr
    mixed = _write(tmp_path / "mixed.csv", [("SD-001", "I forgot my password"), *_tickets(4)],
                   ["password_reset", *[SAID] * 4])
    result, report = _calibrate(home, fake, f"m-{uuid.uuid4().hex[:6]}", mixed, tmp_path,
                                "--id-col", "ticket_id")
    assert result.returncode == 0, result.stderr
    assert (report["tickets_in_file"], report["left_out_in_store"]) == (5, 1)
    assert report["passed_on"] == report["asked"] == 4


def test_rules_are_kept_unchanged_and_listed(home, db, calibrated):
    model = calibrated[0]
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), db.begin() as conn:
        conn.execute(sa.text("UPDATE llm_acceptance_rules SET overall_precision = 0 "
                             "WHERE model = :m"), {"m": model})
    listed = run_cli(home, "llm", "rules", "--json")
    assert listed.returncode == 0, listed.stderr
    mine = [r for r in json.loads(listed.stdout) if r["model"] == model]
    assert len(mine) == 1 and mine[0]["rule_id"] == calibrated[1]["rule_id"]
    assert (mine[0]["asked"], mine[0]["overall_precision"]) == (30, 1.0)
    assert mine[0]["target_precision"] == 0.98  # the deployment's target, not the test's
    table = run_cli(home, "llm", "rules")
    assert table.returncode == 0 and model in table.stdout


def test_evaluate_llm_reports_the_calibrated_precision_and_extra_coverage(
        home, fake, calibrated, tmp_path):
    model = calibrated[0]
    data = _write(tmp_path / "eval.csv", [*_tickets(4), ("e-1", "I forgot my password")],
                  [*[SAID] * 4, "password_reset"])
    reports = {}
    for name in (model, f"uncalibrated-{uuid.uuid4().hex[:6]}"):
        out = tmp_path / f"eval-{name}.json"
        done = run_cli(home, "evaluate", "--llm", "--data", str(data), "--llm-sample", "2",
                       "--json", str(out), CCA_LLM_BASE_URL=fake.base_url,
                       CCA_LLM_MODEL=name, **CALIBRATION_ENV)
        assert done.returncode == 0, done.stderr
        reports[name] = json.loads(out.read_text())
    calibrated_report = reports.pop(model)
    assert calibrated_report["llm_acceptance"]["calibrated"] is True
    assert calibrated_report["llm_calibrated_precision"] == 1.0
    assert calibrated_report["extra_coverage"] == 0.8  # the rule answers, the LLM the rest
    assert calibrated_report["auto_precision"] == {"without_llm": 1.0, "with_llm": 1.0}
    assert calibrated_report["with_llm"]["stage_share"]["llm"] == 0.8
    assert calibrated_report["auto_coverage"] == {"without_llm": 0.2, "with_llm": 1.0}
    by_cell = calibrated_report["with_llm"]["llm_answers_by_cell"]  # checked out of sample
    assert [(c["n"], c["correct"]) for c in by_cell] == [(4, 4)]
    (uncalibrated,) = reports.values()
    assert uncalibrated["llm_acceptance"]["calibrated"] is False
    assert uncalibrated["llm_calibrated_precision"] is None
    assert uncalibrated["extra_coverage"] == 0.0
    assert uncalibrated["with_llm"]["stage_share"]["llm"] == 0.0
    assert uncalibrated["with_llm"]["suggestions"] == {"n": 4, "share": 0.8, "accuracy": 1.0}

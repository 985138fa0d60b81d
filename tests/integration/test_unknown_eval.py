"""`cca evaluate --train --unknown-classes`: intents left out of training in a scratch home,
their test tickets scored as out of scope, the user's home left as it was."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import redis

from cca.errors import InputError, StateError
from cca.model_registry import client
from cca.settings import Settings
from cca.store import Database
from cca.store.dedup_repo import namespace
from evaluation.scratch_home import rules_without
from evaluation.unknown_eval import (
    Hooks,
    UnknownIntentPlan,
    held_out_sets,
    run_unknown_eval,
    without,
)
from pipelines.read_tickets import Columns, read_ticket_file
from rules import load_rules
from tests.conftest import FIXTURES
from tests.integration.conftest import run_cli

TRAIN = FIXTURES / "unknown_intents_train.csv"
TEST = FIXTURES / "unknown_intents_test.csv"
COLS = Columns(text="text", label="intent")
ARGS = ("evaluate", "--data", str(TEST), "--label-col", "intent")


def _labels(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as fh:
        return [row["intent"] for row in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def main_settings(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Settings:
    """The user's home: empty but for the embedding tables the session's home derived, if
    it has (deriving them again would cost a minute)."""
    home = tmp_path_factory.mktemp("unknown-main")
    if (settings.home / "embeddings").is_dir():
        shutil.copytree(settings.home / "embeddings", home / "embeddings")
    return Settings(home=home, rules_path=FIXTURES / "unknown_intents_rules.yaml",
                    department_map=FIXTURES / "unknown_intents_departments.yaml")


@pytest.fixture(scope="module")
def cli_run(main_settings: Settings, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("unknown-out") / "unknown.json"
    result = run_cli(main_settings, *ARGS, "--train", str(TRAIN), "--unknown-classes", "2",
                     "--seeds", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    return result, out


@pytest.fixture(scope="module")
def report(cli_run: tuple[subprocess.CompletedProcess[str], Path]) -> dict:
    return json.loads(cli_run[1].read_text())


def test_prints_the_summary_and_writes_the_whole_report(cli_run, report):
    printed = json.loads(cli_run[0].stdout)
    assert printed["unknown_rejection"] == report["unknown_rejection"]
    assert printed["seeds"][0]["held_out"] == report["seeds"][0]["held_out"]
    assert "trained_labels" not in printed["seeds"][0] and "bundle_metrics" not in (
        printed["baseline"])
    assert "seed 0: " in cli_run[0].stderr and "out-of-scope tickets sent to review" in (
        cli_run[0].stderr)


def test_held_out_intents_are_absent_from_the_scratch_training(report):
    labels = sorted(set(_labels(TRAIN)))
    [seed] = report["seeds"]
    assert seed["held_out"] == held_out_sets(labels, 2, 1)[0]
    assert seed["trained_labels"] == sorted(set(labels) - set(seed["held_out"]))
    assert seed["n_train"] == sum(label not in seed["held_out"] for label in _labels(TRAIN))
    assert report["baseline"]["n"] == len(_labels(TEST))


def test_their_test_tickets_are_scored_as_out_of_scope(report):
    [seed] = report["seeds"]
    test_labels = _labels(TEST)
    assert seed["n_unknown"] == sum(label in seed["held_out"] for label in test_labels)
    assert seed["n_in_scope"] == len(test_labels) - seed["n_unknown"]
    everything = seed["all_tickets"]
    assert everything["out_of_scope"] == seed["n_unknown"]
    # A review of an out-of-scope ticket is right: the accuracy over every ticket is the
    # rejected unknowns plus the in-scope tickets answered right, over all of them.
    right = (seed["unknown_rejection"] * seed["n_unknown"]
             + seed["in_scope_accuracy"] * seed["n_in_scope"])
    assert everything["accuracy"] == pytest.approx(right / everything["n"], abs=1e-3)
    assert seed["unknown_stage_share"].get("review", 0.0) == seed["unknown_rejection"]
    # The left-out intents' route rules went with them: no rule answers their tickets.
    assert "rules" not in seed["unknown_stage_share"]
    assert seed["in_scope_stage_share"]["rules"] > 0


def test_report_fields_averages_and_baseline(report):
    [seed] = report["seeds"]
    for key in ("unknown_rejection", "auto_accuracy", "auto_coverage", "coverage_drop"):
        assert report[key] == seed[key]
        assert report["range"][key] == [seed[key], seed[key]]
    assert seed["coverage_drop"] == pytest.approx(
        seed["baseline_auto_coverage"] - seed["auto_coverage"], abs=1e-4)
    assert report["unknown_classes"] == 2 and report["n_seeds"] == 1 and report["labels"] == 5
    assert set(report["met"]) == {"unknown_rejection", "auto_accuracy", "coverage_drop"}
    assert report["machine"]["cpus"] >= 1 and report["seconds"] > 0
    assert set(seed["seconds"]) == {"prepare", "train", "classify"}
    assert report["baseline"]["bundle_version"] != seed["bundle_version"]
    assert 0 <= report["baseline"]["cache_wrong_hit_bound"] <= 1


def test_logged_to_mlflow_and_the_users_home_untouched(report, main_settings):
    run = client(main_settings).get_run(report["mlflow_run_id"])
    assert run.data.tags["cca.step"] == "unknown_intent_eval"
    assert run.data.metrics["unknown_rejection"] == pytest.approx(report["unknown_rejection"])
    assert run.data.params["held_out_seed_0"] == ",".join(report["seeds"][0]["held_out"])
    home = main_settings.home
    assert not (home / "pg").exists() and not (home / "models").exists()
    _assert_no_scratch_left(home)


def _assert_no_scratch_left(home: Path) -> None:
    assert list((home / "scratch").iterdir()) == []  # every scratch home removed
    servers = [p for p in psutil.process_iter(["cmdline"])
               if any(str(home / "scratch") in part for part in p.info["cmdline"] or [])]
    assert servers == []  # and its embedded PostgreSQL stopped


class _Bar:
    def __call__(self, n: int) -> None:
        pass

    def set_total(self, n: int) -> None:
        pass


@contextmanager
def _quiet(description: str) -> Iterator[_Bar]:
    yield _Bar()


def test_a_failed_training_leaves_no_scratch_home_server_or_redis_keys(main_settings):
    namespaces: list[str] = []

    def failing_train(s: Settings, db: Database) -> str:
        with db.begin() as conn:
            namespaces.append(namespace(conn))
        assert redis.Redis.from_url(s.redis_url).keys(f"cca:lsh:{namespaces[0]}:*")
        raise StateError("training failed on purpose")

    plan = UnknownIntentPlan(train=TRAIN, test=TEST, cols=COLS, unknown_classes=1, seeds=1,
                             baseline=False)
    with pytest.raises(StateError, match="on purpose"):
        run_unknown_eval(main_settings, plan, Hooks(train=failing_train, say=print, bar=_quiet))
    _assert_no_scratch_left(main_settings.home)
    assert redis.Redis.from_url(main_settings.redis_url).keys(f"cca:lsh:{namespaces[0]}:*") == []


@pytest.mark.parametrize(("extra", "message"), [
    (("--unknown-classes", "2"), "--unknown-classes needs --train"),
    (("--train", str(TRAIN)), "--train is only used with --unknown-classes"),
    (("--train", str(TRAIN), "--unknown-classes", "0"), "at least 1, not 0"),
    (("--train", str(TRAIN), "--unknown-classes", "5"), "between 1 and 4 (the training file "
                                                        "has 5 labels), not 5"),
    (("--train", str(TRAIN), "--unknown-classes", "1", "--seeds", "0"), "--seeds must be"),
    (("--train", str(TRAIN), "--unknown-classes", "1", "--llm"), "cannot be combined"),
])
def test_cli_refuses_misused_options_in_one_line(main_settings, tmp_path, extra, message):
    s = main_settings.model_copy(update={"home": tmp_path / "home"})
    result = run_cli(s, *ARGS, *extra)
    assert result.returncode == InputError.exit_code, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "home" / "scratch").exists() or not any(
        (tmp_path / "home" / "scratch").iterdir())


def test_without_and_rules_without(tmp_path):
    parsed = read_ticket_file(TRAIN, COLS)
    kept = without(parsed, {"printer_jam"})
    assert "printer_jam" not in set(kept.labels.values())
    assert len(kept.tickets) == len(kept.labels) == len(parsed.tickets) - _labels(
        TRAIN).count("printer_jam")
    rules = load_rules(rules_without(FIXTURES / "unknown_intents_rules.yaml",
                                     {"printer_jam", "vpn_access"}, tmp_path))
    assert {r.spec.id for r in rules.rules} == {"vpn-token", "payslip", "thinkpad", "permit",
                                           "today"} - {"vpn-token"}
    assert held_out_sets(["a", "b", "c"], 1, 2) == held_out_sets(["c", "b", "a"], 1, 2)

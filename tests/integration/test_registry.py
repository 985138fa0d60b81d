"""People moving ``@champion``: manual promotion, rollback from the recorded history, the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from mlflow import MlflowClient

from cca.bundle import current_version
from cca.departments import load_department_map
from cca.errors import InputError, StateError
from cca.model_registry import alias_version
from cca.settings import Settings
from cca.store.models_repo import NewModelEvent, append_event, label_departments, model_events
from tests.conftest import ROOT
from tests.integration.conftest import cli_env
from tests.integration.test_retrain import (
    bundle_seeds,
    load_fixture,
    module_settings,
    plant_sentinel_seed,
    serving_seeds,
)
from training import registry, steps

# The commands as `cca` will run them (cli/main.py registers them), with the same
# one-line error handling.
CLI = ("import typer; from cli.common import run_app; from cli import registry_cmd as r; "
       "app = typer.Typer(); app.command('promote')(r.promote_cmd); "
       "app.command('rollback')(r.rollback_cmd); app.command('models')(r.models_cmd); "
       "run_app(app)")


def cli(s: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(s, CCA_DATABASE_URL=str(s.database_url),
                  CCA_REGISTERED_MODEL=s.registered_model,
                  CCA_TRAIN_HOLDOUT_FRACTION=str(s.train_holdout_fraction))
    return subprocess.run([sys.executable, "-c", CLI, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def s(settings, db, tmp_path_factory) -> Settings:
    return module_settings(settings, db, tmp_path_factory.mktemp("registry"),
                           registered_model="cca-test-registry")


@pytest.fixture(scope="module")
def two_versions(s, db) -> tuple[dict, dict]:
    """v1 promoted by the gate; v2 registered but refused (floor set out of reach)."""
    load_fixture(s, db)
    first = steps.retrain(s, db)
    second = steps.retrain(s.model_copy(update={"promotion_min_macro_f1": 1.01}), db)
    assert first["promoted"] and not second["promoted"]
    return first, second


def champion_of(s: Settings) -> str | None:
    mv = registry.champion(MlflowClient(s.tracking_uri, s.tracking_uri), s.registered_model)
    return registry.number(mv) if mv else None


def challenger_of(s: Settings) -> str | None:
    mv = alias_version(MlflowClient(s.tracking_uri, s.tracking_uri),
                                s.registered_model, "challenger")
    return registry.number(mv) if mv else None


def test_rollback_with_a_single_champion_refuses_in_one_line(s, db, two_versions):
    with pytest.raises(StateError, match="no previous champion of cca-test-registry"):
        registry.rollback(s, db, "bob", "testing")


def test_promoting_an_unknown_version_names_it(s, db, two_versions):
    with pytest.raises(InputError, match="has no version 42"):
        registry.promote(s, db, "42", "alice", "typo")
    with pytest.raises(InputError, match="--reason"):
        registry.promote(s, db, "2", "alice", "  ")


def test_manual_promotion_serves_the_version_and_is_recorded(s, db, two_versions):
    _, second = two_versions
    model_id, seeds = bundle_seeds(s, second["bundle_version"])
    plant_sentinel_seed(db, model_id)
    result = registry.promote(s, db, "2", "alice", "reviewed the confusions by hand")
    assert result["promoted"] and (result["from"], result["to"]) == ("1", "2")
    assert champion_of(s) == "2"
    assert current_version(s.models_dir) == second["bundle_version"]
    # the cache's track record is the new champion's
    assert serving_seeds(db, model_id) == {k: v for k, v in seeds.items() if v != (0, 0)}
    event = registry.events(db, s.registered_model, ("promote",))[-1]
    assert (event.version, event.actor) == ("2", "alice")
    assert event.reason == "reviewed the confusions by hand"
    assert event.details["source"] == "manual"
    tags = MlflowClient(s.tracking_uri, s.tracking_uri).get_model_version(
        s.registered_model, "2").tags
    assert tags["promoted_by"] == "alice"
    assert challenger_of(s) == "2"  # the latest candidate keeps its alias when promoted
    again = registry.promote(s, db, "2", "alice", "again")
    assert not again["promoted"] and "already champion" in again["message"]


def test_rollback_restores_the_previous_champion_even_without_its_local_bundle(
    s, db, two_versions
):
    first, _ = two_versions
    assert champion_of(s) == "2"
    model_id, seeds = bundle_seeds(s, first["bundle_version"])
    shutil.rmtree(s.models_dir / first["bundle_version"])  # e.g. a fresh serving host
    plant_sentinel_seed(db, model_id)
    result = registry.rollback(s, db, "bob", "v2 misroutes refunds")
    assert (result["rolled_back"], result["champion"]) == ("2", "1")
    assert champion_of(s) == "1"
    assert current_version(s.models_dir) == first["bundle_version"]
    # the seeds came back with the bundle (from MLflow) and serve again
    assert serving_seeds(db, model_id) == {k: v for k, v in seeds.items() if v != (0, 0)}
    assert (s.models_dir / first["bundle_version"] / "classifier.joblib").exists()
    event = registry.events(db, s.registered_model, ("rollback",))[-1]
    assert (event.version, event.actor, event.details["rolled_back"]) == ("1", "bob", "2")
    tags = MlflowClient(s.tracking_uri, s.tracking_uri).get_model_version(
        s.registered_model, "2").tags
    assert tags["rolled_back_reason"] == "v2 misroutes refunds"
    # a rollback moves @champion only: v2 stays the latest candidate, for shadow mode
    assert challenger_of(s) == "2"
    # v1 is the first champion on record: nothing before it
    with pytest.raises(StateError, match="no previous champion"):
        registry.rollback(s, db, "bob", "once more")


def test_cli_promote_rollback_and_models(s, db, two_versions):
    first, second = two_versions
    promoted = cli(s, "promote", "v2", "--reason", "from the CLI", "--actor", "carol")
    assert promoted.returncode == 0, promoted.stderr
    assert "v2 is champion (was v1)" in promoted.stderr
    assert current_version(s.models_dir) == second["bundle_version"]
    rolled = cli(s, "rollback", "--reason", "back again")
    assert rolled.returncode == 0, rolled.stderr
    assert "rolled back cca-test-registry v2 -> v1" in rolled.stderr
    assert current_version(s.models_dir) == first["bundle_version"]
    listing = cli(s, "models")
    assert listing.returncode == 0, listing.stderr
    assert "@champion" in listing.stdout and "carol: from the CLI" in listing.stdout
    missing = cli(s, "rollback", "--reason", "again")
    assert missing.returncode == 3
    assert missing.stderr.count("\n") == 1 and "no previous champion" in missing.stderr


def test_model_events_read_back_typed_oldest_first_and_by_version(s, db, two_versions):
    model = "cca-test-events-repo"
    when = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    with db.begin() as conn:
        append_event(conn, NewModelEvent("register", model, "1", "gate", "retrained",
                                         {"run_id": "r1", "at": when}))
        append_event(conn, NewModelEvent("promote", model, "1", "alice", "looks right"))
        append_event(conn, NewModelEvent("register", model, "2", "gate", "retrained"))
        everything = model_events(conn, model)
        first = model_events(conn, model, "1")
        assert model_events(conn, "no-such-model") == []
    assert [(e.action, e.version, e.actor) for e in everything] == [
        ("register", "1", "gate"), ("promote", "1", "alice"), ("register", "2", "gate")]
    assert [e.id for e in everything] == sorted(e.id for e in everything)
    assert first == everything[:2]
    # details are JSON: what JSON has no type for is stored as its str
    assert first[0].details == {"run_id": "r1", "at": str(when)}
    assert first[1].details == {} and first[1].reason == "looks right"
    assert first[1].at.tzinfo is not None


def test_label_departments_are_those_stored_with_the_validated_labels(s, db, two_versions):
    with db.begin() as conn:
        stored = label_departments(conn)
    assert stored == load_department_map(s.department_map).mapping  # what the import stored

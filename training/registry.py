"""Which registered version serves, and every change to that: promote, rollback, the record.

Serving follows two pointers kept in step: the MLflow alias ``@champion`` (what the registry
says) and ``CCA_HOME/models/CURRENT`` (what ``Cascade.load`` reads); the cache's track-record
seeds saved with the bundle are applied at the same moment. Every move is appended
to ``model_events`` (who, when, why) and tagged on the model version, so the history does not
depend on MLflow being up, and ``rollback`` replays it to find the previous champion.

``@challenger`` names the latest registered candidate and is never moved by a promotion or
a rollback: after a promotion both aliases name the same version (shadow mode then has
nothing to compare and skips it); after a rollback the challenger is still the newest
candidate, which is what shadow mode should keep watching.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cca.bundle import current_version, load_bundle_info, load_track_record_seeds, set_current
from cca.errors import InputError, StateError
from cca.model_registry import (
    CHAMPION,
    champion,
    ensure_local_bundle,
    number,
)
from cca.settings import Settings
from cca.store import Database, exclusive
from cca.store.models_repo import ModelEvent, NewModelEvent, append_event, model_events
from cca.store.vectors import seed_track_record
from training import tracking
from training.model_card import registered_model_description, version_description
from training.results import Evaluation

_MOVES = ("promote", "rollback")


@dataclass(frozen=True)
class Move:
    """Why the champion changes, as the event records it."""

    action: str  # promote or rollback
    actor: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)  # more for the record


def actor_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


def record_event(db: Database, event: NewModelEvent) -> None:
    with db.begin() as conn:
        append_event(conn, event)


def events(db: Database, model: str, actions: tuple[str, ...] | None = None,
           version: str | None = None) -> list[ModelEvent]:
    """The model's events (only these actions, of this version, if given), oldest first."""
    with db.begin() as conn:
        found = model_events(conn, model, version)
    return [e for e in found if actions is None or e.action in actions]


def champion_history(db: Database, model: str) -> list[ModelEvent]:
    """The champions in the order they became champion, with rollbacks undone (a stack)."""
    stack: list[ModelEvent] = []
    for event in events(db, model, _MOVES):
        if event.action == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1].version != event.version:
                stack.append(event)  # history began before this table: trust the event
        else:
            stack.append(event)
    return stack


def serving_note(settings: Settings, db: Database) -> str:
    """What keeps serving if this attempt fails; read from PostgreSQL and disk, not MLflow."""
    history = champion_history(db, settings.registered_model)
    bundle = current_version(settings.models_dir)
    if history:
        return f"champion v{history[-1].version} ({bundle}) keeps serving"
    return f"bundle {bundle} keeps serving" if bundle else "no model is serving yet"


def model_version(mlflow_client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException  # deferred: mlflow is a heavy import

    try:
        return mlflow_client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise InputError(f"{name} has no version {version}: see `cca models`") from exc
        raise


def apply_track_record_seeds(settings: Settings, db: Database, bundle_version: str) -> bool:
    """Give the serving cache this bundle's leave-one-out track record (False: none saved)."""
    found = load_track_record_seeds(settings.models_dir, bundle_version)
    if found is None:
        return False
    with db.begin() as conn:
        seed_track_record(conn, *found)
    return True


def switch_champion(settings: Settings, db: Database, mlflow_client: Any, mv: Any,
                    move: Move) -> dict:
    """Alias, CURRENT, track-record seeds, tags, then the event row: the one way a champion
    changes. The event comes last, so it never claims a move that did not happen; a move
    interrupted before it is completed by ``steps.promote_if_better`` on retry.
    """
    name = settings.registered_model
    before = champion(mlflow_client, name)
    bundle_version = ensure_local_bundle(settings, mv)
    mlflow_client.set_registered_model_alias(name, CHAMPION, number(mv))
    set_current(settings.models_dir, bundle_version)
    apply_track_record_seeds(settings, db, bundle_version)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    past = {"promote": "promoted", "rollback": "restored"}.get(move.action, move.action)
    for key, value in ((f"{past}_at", now), (f"{past}_by", move.actor),
                       (f"{past}_reason", move.reason[:500])):
        mlflow_client.set_model_version_tag(name, number(mv), key, value)
    if before is not None and number(before) != number(mv):
        mlflow_client.set_model_version_tag(name, number(before), "replaced_at", now)
    info = {"from": number(before) if before else None, "to": number(mv),
            "bundle_version": bundle_version, **move.details}
    record_event(db, NewModelEvent(move.action, name, number(mv), move.actor, move.reason, info))
    return info


def register_version(settings: Settings, db: Database, mlflow_client: Any,
                     evaluation: Evaluation, actor: str) -> str:
    """Register the candidate's logged model, its scores as tags and its summary as the
    version's description (the registered model's from the model card); the version."""
    import mlflow  # deferred: mlflow is a heavy import (loaded by the session by now)

    candidate, name = evaluation.candidate, settings.registered_model
    macro_f1 = evaluation.candidate_scores["macro_f1"]
    tags = {"bundle_version": candidate.bundle_version, "run_id": candidate.run.run_id,
            "data_since": candidate.since, "holdout_macro_f1": macro_f1,
            "holdout_accuracy": candidate.metrics["holdout_accuracy"],
            "holdout_n": evaluation.holdout_n,
            "compared_with": (evaluation.champion.version if evaluation.champion else None)
            or "-"}
    mv = mlflow.register_model(candidate.run.model_uri, name,
                               tags={k: str(v) for k, v in tags.items()})
    version = number(mv)
    info = load_bundle_info(settings.models_dir, candidate.bundle_version)
    if info is not None:
        mlflow_client.update_registered_model(
            name, description=registered_model_description(info, settings))
    mlflow_client.update_model_version(name, version, description=(
        version_description(info, macro_f1, evaluation.holdout_n) if info is not None
        else f"cca bundle {candidate.bundle_version}: holdout macro-F1 {macro_f1:.4f}"))
    record_event(db, NewModelEvent(
        "register", name, version, actor, "retrained",
        {"bundle_version": candidate.bundle_version, "run_id": candidate.run.run_id}))
    return version


def promote(settings: Settings, db: Database, version: str, actor: str, reason: str) -> dict:
    """A person makes ``version`` champion (no gate: the reason is the justification).

    Promotions, rollbacks and the gate take one lock, so the alias and CURRENT never end up
    pointing at different versions."""
    if not reason.strip():
        raise InputError("a promotion needs a --reason")
    if not version.strip().isdigit():
        raise InputError(f"model version must be a number such as 3, not {version!r} "
                         "(see `cca models`)")
    with exclusive(db, "registry"):
        return _promote(settings, db, version.strip(), actor, reason)


def _promote(settings: Settings, db: Database, version: str, actor: str, reason: str) -> dict:
    with tracking.mlflow_session(settings, serving_note(settings, db)) as mlflow_client:
        mv = model_version(mlflow_client, settings.registered_model, version)
        now = champion(mlflow_client, settings.registered_model)
        if now is not None and number(now) == number(mv):
            return {"promoted": False, "version": number(mv),
                    "message": f"v{number(mv)} is already champion"}
        info = switch_champion(settings, db, mlflow_client, mv,
                               Move("promote", actor, reason, {"source": "manual"}))
    return {"promoted": True, "version": number(mv), **info}


def rollback(settings: Settings, db: Database, actor: str, reason: str) -> dict:
    """Champion goes back to the one before it, as recorded in ``model_events``."""
    if not reason.strip():
        raise InputError("a rollback needs a --reason")
    with exclusive(db, "registry"):
        return _rollback(settings, db, actor, reason)


def _rollback(settings: Settings, db: Database, actor: str, reason: str) -> dict:
    name = settings.registered_model
    history = champion_history(db, name)
    if len(history) < 2:
        raise StateError(f"no previous champion of {name} to roll back to "
                         f"({len(history)} champion(s) on record)")
    current, previous = history[-1], history[-2]
    with tracking.mlflow_session(settings, serving_note(settings, db)) as mlflow_client:
        mv = model_version(mlflow_client, name, str(previous.version))
        info = switch_champion(settings, db, mlflow_client, mv,
                               Move("rollback", actor, reason, {"rolled_back": current.version}))
        mlflow_client.set_model_version_tag(name, current.version, "rolled_back_reason",
                                            reason[:500])
    return {"rolled_back": current.version, "champion": number(mv), **info}

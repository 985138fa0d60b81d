"""``cca promote``, ``cca rollback`` and ``cca models``: people moving ``@champion``, on record."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from cli.common import console, database, settings, stdout
from training import tracking

# training.registry loads scikit-learn (the bundle) and SQLAlchemy: imported inside the
# commands, so `cca --help` answers at once.

Reason = Annotated[str, typer.Option("--reason", help="Why (recorded in model_events).")]
Actor = Annotated[str | None, typer.Option(help="Who (default: the login name).")]


def promote_cmd(
    version: Annotated[str, typer.Argument(help="Registered model version, e.g. 3.")],
    reason: Reason,
    actor: Actor = None,
) -> None:
    """Make a registered version champion and serve it (no gate: your reason is the record)."""
    from training.registry import actor_name, promote  # deferred: see above

    s = settings()
    with database() as db:
        result = promote(s, db, version.lstrip("v"), actor or actor_name(), reason)
    if not result["promoted"]:
        console.print(result["message"])
        return
    console.print(f"{s.registered_model} v{result['to']} is champion (was "
                  f"v{result['from'] or '-'}); serving bundle {result['bundle_version']}")


def rollback_cmd(reason: Reason, actor: Actor = None) -> None:
    """Put the previous champion back (from the model_events history) and serve it."""
    from training.registry import actor_name, rollback  # deferred: see above

    s = settings()
    with database() as db:
        result = rollback(s, db, actor or actor_name(), reason)
    console.print(f"rolled back {s.registered_model} v{result['rolled_back']} -> "
                  f"v{result['champion']}; serving bundle {result['bundle_version']}")


def models_cmd(
    events: Annotated[int, typer.Option(help="How many recent events to show.")] = 10,
) -> None:
    """Registered versions with their aliases and holdout scores, and the latest events."""
    from training import registry  # deferred: see above

    s = settings()
    with database() as db:
        with tracking.mlflow_session(s, registry.serving_note(s, db)) as client:
            versions = client.search_model_versions(f"name = '{s.registered_model}'")
            aliases: dict[str, list[str]] = {}
            if versions:
                for alias, number in client.get_registered_model(
                        s.registered_model).aliases.items():
                    aliases.setdefault(str(number), []).append(f"@{alias}")
        recent = registry.events(db, s.registered_model)[-events:]
    table = Table(title=f"{s.registered_model} ({s.tracking_uri})")
    for col in ("version", "aliases", "bundle", "holdout macro-F1", "created"):
        table.add_column(col)
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        table.add_row(str(mv.version), " ".join(aliases.get(str(mv.version), [])),
                      mv.tags.get("bundle_version", "-"), mv.tags.get("holdout_macro_f1", "-"),
                      f"{mv.creation_timestamp and _when(mv.creation_timestamp)}")
    stdout.print(table)
    for e in recent:
        stdout.print(f"{e.at:%Y-%m-%d %H:%M} {e.action:<12} v{e.version or '-':<4} "
                     f"{e.actor}: {e.reason}", highlight=False)


def _when(ms: int) -> str:
    return f"{datetime.fromtimestamp(ms / 1000, UTC):%Y-%m-%d %H:%M}"

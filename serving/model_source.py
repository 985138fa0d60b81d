"""Which bundle the service loads: the registry's ``@champion`` (or ``@challenger``), with the
last good copy under ``CCA_HOME`` so a restart while MLflow is down still serves.

Every successful resolution writes ``models/LAST_GOOD_<alias>.json``; when MLflow cannot be
asked, that file (and for the champion, ``CURRENT``) names the bundle on disk instead.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from cca import model_registry as registry
from cca.bundle import current_version
from cca.errors import StateError
from cca.settings import Settings

log = logging.getLogger("cca.serving.model")


@dataclass(frozen=True)
class ModelChoice:
    alias: str
    bundle_version: str
    registry_version: str | None
    source: str  # "mlflow", "last good copy" or "CURRENT"


def _last_good_path(settings: Settings, alias: str) -> Path:
    return settings.models_dir / f"LAST_GOOD_{alias}.json"


def _remember(settings: Settings, choice: ModelChoice) -> None:
    path = _last_good_path(settings, choice.alias)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(choice)))
    tmp.replace(path)


def _from_registry(settings: Settings, alias: str) -> ModelChoice | None:
    """The alias's version, its bundle copied under CCA_HOME; None when the alias is unset."""
    registry.check_reachable(settings, "serving the last good copy")
    mv = registry.alias_version(registry.client(settings), settings.registered_model, alias)
    if mv is None:
        return None
    return ModelChoice(alias=alias, bundle_version=registry.ensure_local_bundle(settings, mv),
                       registry_version=registry.number(mv), source="mlflow")


def resolve(settings: Settings, alias: str = "champion") -> ModelChoice | None:
    """The bundle to load for ``alias``; None only for a challenger that does not exist.

    Raises StateError when there is nothing at all to serve (no registry answer and no copy).
    """
    try:
        choice = _from_registry(settings, alias)
    except Exception as exc:  # unreachable server, broken store: fall back to the copy
        log.warning("MLflow registry unavailable (%s); using the last good copy of @%s",
                    str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__, alias)
        choice = None
        fallback = _last_good_path(settings, alias)
        if fallback.exists():
            saved = ModelChoice(**json.loads(fallback.read_text()))
            if (settings.models_dir / saved.bundle_version / "bundle.json").exists():
                return ModelChoice(alias=alias, bundle_version=saved.bundle_version,
                                   registry_version=saved.registry_version,
                                   source="last good copy")
        if alias != "champion":
            return None
    else:
        if choice is not None:
            _remember(settings, choice)
            return choice
        if alias != "champion":
            return None
    # No champion in the registry (e.g. `cca train --no-registry`) or no copy: CURRENT.
    bundle = current_version(settings.models_dir)
    if bundle is None:
        raise StateError(f"nothing to serve: no @champion in the registry and no model under "
                         f"{settings.models_dir}; run `cca run` or `cca train` first")
    return ModelChoice(alias=alias, bundle_version=bundle, registry_version=None,
                       source="CURRENT")

"""The MLflow registry, read-only: where it is, whether it answers, which version an alias names,
and that version's bundle on local disk.

Serving and training both read the registry; only ``training.registry`` moves aliases. mlflow
is a heavy import, so it is imported inside the functions that talk to it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cca.errors import StateError
from cca.settings import Settings

CHAMPION, CHALLENGER = "champion", "challenger"

# A dying tracking server must fail in seconds, not after MLflow's default 7 retries of up to
# 120 s each; an explicit environment setting still wins.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    # The pyfunc pins its requirements; the project's whole uv.lock (Airflow, GE, ...) would
    # otherwise be copied into every model version.
    "MLFLOW_LOG_UV_FILES": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # one-line logs, not progress bars
}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def is_local_default(settings: Settings) -> bool:
    return settings.mlflow_tracking_uri is None


def check_reachable(settings: Settings, serving: str) -> None:
    """Raise a one-line StateError naming what keeps serving if MLflow cannot be reached."""
    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = settings.tracking_uri
    try:
        if uri.startswith(("http://", "https://")):
            import httpx  # deferred: every `cca` command loads this module; few talk to MLflow

            httpx.get(uri.rstrip("/") + "/health", timeout=5.0).raise_for_status()
        elif uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    except Exception as exc:  # httpx.HTTPError, OSError: all mean "cannot use MLflow now"
        raise StateError(f"MLflow at {uri} is unreachable ({first_line(exc)}): {serving}"
                         ) from exc


def client(settings: Settings) -> Any:
    """An ``MlflowClient`` for this home."""
    from mlflow import MlflowClient  # deferred: mlflow is a heavy import, only when needed

    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def champion(mlflow_client: Any, name: str) -> Any | None:
    """The ``@champion`` model version, or None when there is none yet."""
    return alias_version(mlflow_client, name, CHAMPION)


def alias_version(mlflow_client: Any, name: str, alias: str) -> Any | None:
    """The model version an alias names, or None when the alias (or the model) is unset."""
    from mlflow.exceptions import MlflowException  # deferred: mlflow is a heavy import

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def number(mv: Any) -> str:
    """A version number as text: the SQLite store gives ints, the REST API strings."""
    return str(mv.version)


def ensure_local_bundle(settings: Settings, mv: Any) -> str:
    """The version's bundle under CCA_HOME/models, downloaded from MLflow if it is not there."""
    bundle_version = mv.tags.get("bundle_version")
    if not bundle_version:
        raise StateError(f"{mv.name} v{number(mv)} has no bundle_version tag: not a cca model")
    target = settings.models_dir / bundle_version
    if (target / "bundle.json").exists() and (target / "classifier.joblib").exists():
        return bundle_version
    import mlflow.artifacts  # deferred: mlflow is a heavy import

    with tempfile.TemporaryDirectory(dir=settings.home) as tmp:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{mv.name}/{number(mv)}", dst_path=tmp,
            tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri))
        source = local / "artifacts" / bundle_version
        if not (source / "bundle.json").exists():
            raise StateError(f"{mv.name} v{number(mv)}: no bundle {bundle_version} in its "
                             "artifacts")
        shutil.copytree(source, target, dirs_exist_ok=True)
    return bundle_version

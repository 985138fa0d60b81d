"""Where MLflow is, whether it answers, and a session that never leaks its URI to other code.

The fluent API (``mlflow.start_run``, ``mlflow.pyfunc.log_model``) reads a process-wide
tracking URI, so a session sets it on entry and restores the environment on exit: two homes
(or two tests) in one process never write into each other's store. Anything that only needs
the registry uses ``client(settings)`` and touches no global at all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cca.errors import StateError
from cca.model_registry import check_reachable, client, first_line, is_local_default
from cca.settings import Settings

_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
NOTE = "mlflow.note.content"  # the tag MLflow shows as an experiment's or run's description


def experiment_id(settings: Settings) -> str:
    """The project's experiment, created on first use with artifacts under CCA_HOME.

    Its description (what a run holds, where the guide is) is written each time, so an
    experiment created by an older version gains it and a changed text replaces it."""
    mlflow_client = client(settings)
    found = mlflow_client.get_experiment_by_name(settings.mlflow_experiment)
    if found is not None:
        experiment = found.experiment_id
    else:
        location = None
        if is_local_default(settings):
            location = (settings.mlflow_dir / "artifacts").as_uri()
        experiment = mlflow_client.create_experiment(settings.mlflow_experiment,
                                                     artifact_location=location)
    # deferred: the model card module loads the model bundle (scikit-learn, pandas), which
    # `cca models` and the other registry commands that import this module never need
    from training.model_card import experiment_description

    mlflow_client.set_experiment_tag(experiment, NOTE, experiment_description(settings))
    return experiment


@contextmanager
def mlflow_session(settings: Settings, serving: str) -> Iterator[Any]:
    """Check MLflow, point the fluent API at it, and turn its failures into one line.

    ``serving`` says what keeps serving if this fails (e.g. "champion v3 keeps serving").
    Yields an ``MlflowClient``.
    """
    check_reachable(settings, serving)
    # deferred: mlflow is a heavy import (requests comes with it), and an unreachable MLflow
    # must fail before paying for it
    import mlflow
    import requests
    from mlflow.exceptions import MlflowException

    # INFO lines about table creation, and warnings that do not apply to a model we wrote and
    # load ourselves (cloudpickle of our own class; pip version for a conda spec we never use).
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    for noisy in ("mlflow.pyfunc", "mlflow.utils.environment"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    saved = {name: os.environ.get(name) for name in _URI_VARS}
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    try:
        yield client(settings)
    except (MlflowException, requests.RequestException) as exc:
        raise StateError(f"MLflow at {settings.tracking_uri} failed ({first_line(exc)}): "
                         f"{serving}") from exc
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run("FAILED")
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # None clears the override
        mlflow.set_registry_uri(None)  # type: ignore[arg-type]
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

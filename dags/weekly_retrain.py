"""Weekly retrain: train -> evaluate -> register -> promote only if the gate passes."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task
from assets import CHAMPION_MODEL


@dag(
    schedule="@weekly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    tags=["cca", "lifecycle", "training"],
)
def weekly_retrain() -> None:
    """
    ### Weekly retrain
    1. **train** a candidate on the redacted, de-duplicated, validated tickets of the last
       `CCA_TRAIN_WINDOW_DAYS`; the run is logged to MLflow, nothing it does serves yet.
    2. **evaluate** it and the current champion on the same holdout.
    3. **register** it as a new version of the registered model, alias `@challenger`.
    4. **promote** it to `@champion` only if the gate passes: macro-F1 at least
       `CCA_PROMOTION_MIN_MACRO_F1`, not below the champion's, and no class losing more than
       `CCA_PROMOTION_MAX_CLASS_DROP` F1. A refusal is a result, not a failure; either way the
       decision goes to `model_events` and `cca://models/champion` is updated.

    Task logic lives in `training/steps.py` (`training/dag_steps.py` for the XComs).
    """

    # Each task imports its step when it runs, not when the scheduler parses this file
    # (deferred: the steps load scikit-learn, SciPy and SQLAlchemy). Results travel between
    # tasks as JSON dicts (training/dag_steps.py).

    @task
    def train() -> dict:
        """Fit and calibrate a candidate cascade model."""
        from training.dag_steps import train_task

        return train_task()

    @task
    def evaluate(candidate: dict) -> dict:
        """Score the candidate (and the champion) on the holdout."""
        from training.dag_steps import evaluate_task

        return evaluate_task(candidate)

    @task
    def register(evaluation: dict) -> dict:
        """Register the candidate as a new model version, alias `@challenger`."""
        from training.dag_steps import register_task

        return register_task(evaluation)

    @task(outlets=[CHAMPION_MODEL])
    def promote(registered: dict) -> dict:
        """Move `@champion` to the candidate if it passes the promotion gate."""
        from training.dag_steps import promote_task

        return promote_task(registered)

    promote(register(evaluate(train())))


weekly_retrain()

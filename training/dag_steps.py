"""The retraining steps as the ``weekly_retrain`` DAG runs them: JSON dicts in and out.

Airflow hands a task's result to the next task as an XCom, which must be JSON; each function
here reads the previous step's dict back into its typed result, runs the step
(``training.steps``) and returns the new result as a flat dict (``training.results``).
"""

from __future__ import annotations

from typing import Any

from training.results import Candidate, Evaluation, Registration
from training.steps import (
    evaluate_candidate,
    promote_if_better,
    register_candidate,
    train_candidate,
)


def train_task() -> dict[str, Any]:
    return train_candidate().to_dict()


def evaluate_task(candidate: dict[str, Any]) -> dict[str, Any]:
    return evaluate_candidate(Candidate.from_dict(candidate)).to_dict()


def register_task(evaluation: dict[str, Any]) -> dict[str, Any]:
    return register_candidate(Evaluation.from_dict(evaluation)).to_dict()


def promote_task(registered: dict[str, Any]) -> dict[str, Any]:
    return promote_if_better(Registration.from_dict(registered)).to_dict()

"""The unknown-intent measurement as one MLflow run in the project's experiment.

Beside the training runs, so a model's figures and how it treats intents it was never taught
are found in one place; tagged ``cca.step=unknown_intent_eval``. Logged through an
``MlflowClient`` only (no process-wide tracking URI), by the caller's session.
"""

from __future__ import annotations

import time
from typing import Any

STEP_TAG = "unknown_intent_eval"
_HEADLINE = ("unknown_rejection", "auto_accuracy", "auto_coverage", "coverage_drop",
             "seconds", "seconds_per_seed")
_PER_SEED = ("unknown_rejection", "auto_accuracy", "auto_coverage", "coverage_drop",
             "baseline_auto_coverage", "n_unknown", "n_in_scope")


def log_unknown_eval(client: Any, experiment_id: str, report: dict) -> str:
    """Params, headline metrics (per-seed ones with the seed as step) and the whole report as
    an artifact; the run id. A failure marks the run FAILED and is raised."""
    # deferred: mlflow is a heavy import; the caller's session has loaded it by now
    from mlflow.entities import Metric, Param

    run = client.create_run(
        experiment_id, run_name=f"unknown-intents-k{report['unknown_classes']}",
        tags={"cca.step": STEP_TAG})
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(report[k]), now, 0) for k in _HEADLINE
                   if report.get(k) is not None]
        baseline = report.get("baseline") or {}
        metrics += [Metric(f"baseline_{k}", float(baseline[k]), now, 0)
                    for k in ("auto_accuracy", "auto_coverage") if k in baseline]
        for seed in report["seeds"]:
            metrics += [Metric(f"seed_{k}", float(seed[k]), now, int(seed["seed"]))
                        for k in _PER_SEED if seed.get(k) is not None]
        params = [Param(k, str(report[k])) for k in ("train", "test", "labels",
                                                     "unknown_classes", "n_seeds")]
        params += [Param(f"held_out_seed_{s['seed']}", ",".join(s["held_out"])[:6000])
                   for s in report["seeds"]]
        client.log_batch(run_id, metrics=metrics, params=params)
        client.log_dict(run_id, report, "unknown_intents.json")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id

"""``cca run``: the main job end to end on Banking77.

Import → prepare (redact PII, link near-duplicates, validate, embed and index) → retrain
(train, evaluate, register in MLflow, gated promotion) → evaluate the champion on the test
split. The steps are the functions the Airflow DAGs call; no logic lives twice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cca.package_data import data_path
from cli.common import console, database, settings, stdout
from cli.data import do_import
from cli.lifecycle_cmd import do_prepare
from cli.model import do_evaluate, do_train
from pipelines.read_tickets import Columns

BANKING77_DEPARTMENTS = data_path("rules", "departments", "banking77.yaml")


def run_cmd(
    json_out: Annotated[Path | None, typer.Option("--json", help="Report path.")] = None,
    predictions: Annotated[Path | None, typer.Option(help="Per-ticket JSONL path.")] = None,
) -> None:
    """Import Banking77 train, prepare, retrain with MLflow, evaluate on test, print the report."""
    from pipelines.banking77 import banking77_file  # deferred: httpx and tenacity

    s = settings()
    t0 = time.perf_counter()
    cols = Columns(text="text", label="category")
    departments = s.department_map or BANKING77_DEPARTMENTS
    json_out = json_out or s.reports_dir / "banking77_test.json"
    predictions = predictions or s.reports_dir / "banking77_test_predictions.jsonl"
    with database() as db:
        console.print(f"[bold]1/4 import[/bold] (home {s.home})")
        do_import(db, banking77_file(s, "train"), cols, "banking77-train", departments)
        console.print("[bold]2/4 prepare: redact, dedup, validate, embed and index[/bold]")
        started = time.perf_counter()
        prepared = do_prepare(db)
        prepare_seconds = time.perf_counter() - started
        console.print("[bold]3/4 retrain: train, evaluate, register, gated promotion[/bold]")
        retrained = do_train(db, departments)
        console.print("[bold]4/4 evaluate the champion on the test split[/bold]")
        report = do_evaluate(db, banking77_file(s, "test"), cols, json_out, predictions)
    report["prepare"] = {**prepared, "seconds": round(prepare_seconds, 1)}
    report["retrain"] = retrained
    report["main_job_seconds"] = round(time.perf_counter() - t0, 1)
    json_out.write_text(json.dumps(report, indent=2))
    table = Table(title="Banking77 test, no LLM")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("n", "top1_accuracy", "top1_department_accuracy", "auto_coverage",
                "auto_accuracy", "accuracy", "department_accuracy", "macro_f1",
                "throughput_per_s", "cost_per_ticket_usd", "main_job_seconds"):
        table.add_row(key, str(report[key]))
    table.add_row("latency_ms p50/p95/p99", "/".join(str(v) for v in report["latency_ms"].values()))
    table.add_row("stage share", ", ".join(f"{k} {v:.1%}" for k, v in
                                           report["stage_share"].items()))
    rows = report.get("per_class", [])
    earned = sum(r["status"] == "earned" for r in rows)
    table.add_row("classes earning automatic answers", f"{earned} of {len(rows)}")
    table.add_row("classes below their target on test",
                  ", ".join(report.get("classes_below_target", [])) or "none")
    stdout.print(table)
    console.print(f"report: {json_out}\npredictions: {predictions}")
    console.print(f"MLflow: run {retrained.get('run_id')}, {s.registered_model} "
                  f"v{retrained.get('model_version')} at {s.tracking_uri} "
                  "(`make mlflow-ui` to browse it)")

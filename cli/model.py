"""``cca train``, ``classify``, ``evaluate`` and ``feedback``: the model's life in commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cca.errors import InputError, StateError
from cca.tickets import Ticket
from cli import evaluate_llm_cmd
from cli.common import console, database, print_json, progress_bar, settings
from cli.data import LabelCol, TextCol, do_import
from cli.lifecycle_cmd import do_prepare
from pipelines.read_tickets import Columns, read_ticket_file

if TYPE_CHECKING:
    from cca.settings import Settings
    from cca.store import Database

# scikit-learn, onnxruntime, SQLAlchemy and the models load inside the commands that need
# them (the deferred imports below), so `cca --help` and `cca rules check` answer at once.


def do_train(db: Database, departments: Path | None = None) -> dict:
    """train → evaluate → register → gated promotion: the steps of the weekly_retrain DAG."""
    from training.steps import retrain  # deferred: scikit-learn and SQLAlchemy

    s = settings()
    if departments is not None and departments != s.department_map:
        s = s.model_copy(update={"department_map": departments})
    result = retrain(s, db, progress=lambda msg: console.print(f"train: {msg}"))
    metrics = result.get("metrics", {})
    console.print(
        f"trained {result['bundle_version']}: holdout accuracy "
        f"{metrics.get('holdout_accuracy', float('nan')):.4f}, macro-F1 "
        f"{metrics.get('holdout_macro_f1', float('nan')):.4f}; registered "
        f"{s.registered_model} v{result.get('model_version')} @challenger "
        f"({result['retrain_seconds']}s)"
    )
    if result["promoted"]:
        console.print(f"promoted v{result.get('model_version')} to @champion: now serving")
    else:
        console.print(f"[yellow]not promoted[/yellow]: {'; '.join(result['reasons'])}; "
                      f"{result.get('serving') or 'the champion keeps serving'}")
    return result


def do_evaluate(db: Database, path: Path, cols: Columns, json_out: Path | None,
                predictions: Path | None) -> dict:
    # deferred: the cascade loads scikit-learn and SQLAlchemy
    from cascade.cascade import Cascade
    from evaluation.cascade_eval import evaluate, write_predictions

    s = settings()
    parsed = read_ticket_file(path, cols, max_chars=s.max_text_chars, collapse_duplicates=False)
    parsed.refuse_if_rejected("nothing evaluated")
    tickets = parsed.tickets
    truths = [parsed.labels[t.id] for t in tickets]
    cascade = Cascade.load(s, db)
    with progress_bar("evaluating", total=len(tickets)) as advance:
        report, decisions = evaluate(cascade, tickets, truths, progress=advance)
    report["data"] = str(path)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
    if predictions:
        write_predictions(predictions, tickets, truths, decisions, cascade.sanitizer)
    return report


def train_cmd(
    data: Annotated[Path | None, typer.Option(help="Import this file first.")] = None,
    text_col: TextCol = "text",
    label_col: LabelCol = "label",
    departments: Annotated[Path | None, typer.Option(help="Department map YAML.")] = None,
) -> None:
    """Prepare what is new, then train on validated labels, register, and promote if better."""
    with database() as db:
        if data:
            do_import(db, data, Columns(text=text_col, label=label_col), None, departments)
        do_prepare(db)
        do_train(db, departments)


def classify_cmd(
    text: Annotated[str | None, typer.Argument(help="Ticket text.")] = None,
    file: Annotated[Path | None, typer.Option(help="CSV/JSONL of tickets instead.")] = None,
    text_col: TextCol = "text",
    as_json: Annotated[bool, typer.Option("--json", help="Print full decisions as JSON.")] = False,
) -> None:
    """Classify and route tickets; each decision is stored and audited."""
    # deferred: the cascade and the store load scikit-learn and SQLAlchemy
    from cascade.cascade import Cascade
    from cca.store.audit import append_decisions
    from cca.store.tickets_repo import upsert_tickets

    s = settings()
    if (text is None) == (file is None):
        raise InputError("give either a ticket text or --file, not both or neither")
    if file:
        parsed = read_ticket_file(file, Columns(text=text_col), source="cli",
                                  max_chars=s.max_text_chars)
        parsed.refuse_if_rejected("nothing classified")
        tickets = parsed.tickets
    else:
        assert text is not None
        if not text.strip():
            raise InputError("ticket text is empty")
        if len(text) > s.max_text_chars:
            raise InputError(f"ticket text is {len(text)} characters (limit {s.max_text_chars})")
        tickets = [Ticket(id=Ticket.new_id(), source="cli", body=text)]
    with database() as db:
        cascade = Cascade.load(s, db)
        decisions = cascade.classify_batch(tickets)
        with db.begin() as conn:
            upsert_tickets(conn, tickets)
            append_decisions(conn, list(zip(tickets, decisions, strict=True)))
    for d in decisions:
        if as_json:
            print_json(d.model_dump())
        else:
            label = d.label or "NEEDS HUMAN REVIEW"
            typer.echo(f"{d.ticket_id}\t{label}\t{d.department or '-'}\turgency={d.urgency}\t"
                       f"stage={d.stage}\tconfidence={d.confidence:.3f}")


def evaluate_cmd(
    data: Annotated[Path, typer.Option(help="Labelled CSV/JSONL to evaluate on.")],
    text_col: TextCol = "text",
    label_col: LabelCol = "label",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    predictions: Annotated[Path | None, typer.Option(help="Write per-ticket JSONL here.")] = None,
    llm: Annotated[bool, typer.Option("--llm", help="Compare the cascade with and without "
                                      "the LLM stage, and the LLM alone (local server if "
                                      "CCA_LLM_BASE_URL is unset).")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="--llm: tickets, spread over the "
                                              "file.")] = None,
    llm_sample: Annotated[int, typer.Option(min=1, help="--llm: tickets for the LLM-only "
                                            "run.")] = 100,
    price_in_per_m: Annotated[float, typer.Option(min=0, help="--llm: USD per million input "
                                                  "tokens.")] = 0.15,
    price_out_per_m: Annotated[float, typer.Option(min=0, help="--llm: USD per million "
                                                   "output tokens.")] = 0.60,
    train: Annotated[Path | None, typer.Option(help="With --unknown-classes: the labelled "
                                               "training file.")] = None,
    unknown_classes: Annotated[int | None, typer.Option(
        help="Train without K random intents of --train in a scratch home, and measure how "
             "many of their --data tickets go to review.")] = None,
    seeds: Annotated[int, typer.Option(help="--unknown-classes: how many random draws.")] = 3,
    baseline: Annotated[bool, typer.Option(help="--unknown-classes: also train on every "
                                           "intent, for the coverage drop.")] = True,
) -> None:
    """Run the cascade on labelled tickets and report accuracy, coverage, speed and cost."""
    if not label_col:
        raise InputError("--label-col is required for evaluation")
    if unknown_classes is not None or train is not None:
        _check_unknown_options(train, unknown_classes, seeds, llm or predictions is not None)
        assert train is not None and unknown_classes is not None
        report = do_unknown_eval(train, data, Columns(text=text_col, label=label_col),
                                 (unknown_classes, seeds, baseline), json_out)
        print_json(_unknown_summary(report))
        return
    if llm:
        with database() as db:
            report = evaluate_llm_cmd.run(
                db, data, Columns(text=text_col, label=label_col), limit=limit,
                llm_sample=llm_sample, price_in_per_m=price_in_per_m,
                price_out_per_m=price_out_per_m, json_out=json_out)
        print_json(report)
        return
    with database() as db:
        report = do_evaluate(db, data, Columns(text=text_col, label=label_col), json_out,
                             predictions)
    print_json({k: v for k, v in report.items() if k != "per_class"})
    if report.get("per_class"):
        console.print(f"per-class table: {len(report['per_class'])} classes in the --json report"
                      f" (worst first); below their target: "
                      f"{', '.join(report['classes_below_target']) or 'none'}")


def _check_unknown_options(train: Path | None, unknown_classes: int | None, seeds: int,
                           other_mode: bool) -> None:
    """One line for each way the unknown-intent options can be misused."""
    if train is None:
        raise InputError("--unknown-classes needs --train FILE: the intents are removed "
                         "from the training data, the tickets to score come from --data")
    if unknown_classes is None:
        raise InputError("--train is only used with --unknown-classes K")
    if unknown_classes < 1:
        raise InputError(f"--unknown-classes must be at least 1, not {unknown_classes}")
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, not {seeds}")
    if other_mode:
        raise InputError("--unknown-classes cannot be combined with --llm or --predictions")


def _unknown_summary(report: dict) -> dict:
    """The headline and each seed's figures; the labels and bundle metrics stay in --json."""
    keep = ("seed", "held_out", "unknown_rejection", "auto_accuracy", "auto_coverage",
            "coverage_drop", "unknown_stage_share")
    baseline = {k: v for k, v in (report.get("baseline") or {}).items()
                if k != "bundle_metrics"}
    return {**{k: v for k, v in report.items() if k not in ("seeds", "baseline")},
            "baseline": baseline or None,
            "seeds": [{k: s.get(k) for k in keep} for s in report["seeds"]]}


def _train_scratch(s: Settings, db: Database) -> str:
    """``cca train``'s steps in a scratch home; its candidate serves there whatever the gate
    decides (the experiment measures the model trained, not the gate)."""
    # deferred: scikit-learn, SQLAlchemy and mlflow
    from training.registry import promote
    from training.steps import retrain

    result = retrain(s, db, progress=lambda msg: console.print(f"  train: {msg}"))
    if not result["promoted"]:
        promote(s, db, str(result["model_version"]), "unknown-intent-eval",
                "scratch home: the candidate is measured whatever the gate decided")
    return str(result["bundle_version"])


def do_unknown_eval(train: Path, test: Path, cols: Columns, runs: tuple[int, int, bool],
                    json_out: Path | None) -> dict:
    """The unknown-intent experiment (``runs``: K intents out, seeds, baseline or not), its
    JSON, and its run in the project's MLflow."""
    # deferred: the cascade, training and mlflow load scikit-learn, SQLAlchemy and mlflow
    from evaluation.unknown_eval import Hooks, UnknownIntentPlan, run_unknown_eval
    from evaluation.unknown_eval_log import log_unknown_eval
    from training import tracking

    s = settings()
    k, seeds, baseline = runs
    plan = UnknownIntentPlan(train=train, test=test, cols=cols, unknown_classes=k,
                             seeds=seeds, baseline=baseline)
    hooks = Hooks(train=_train_scratch, bar=progress_bar,
                  say=lambda msg: console.print(f"unknown intents: {msg}", highlight=False))
    report = run_unknown_eval(s, plan, hooks)
    if json_out:  # written before MLflow is asked, so an outage loses no measurement
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
    try:
        with tracking.mlflow_session(s, "the report is in the JSON") as client:
            report["mlflow_run_id"] = log_unknown_eval(client, tracking.experiment_id(s),
                                                       report)
    except StateError as exc:
        console.print(f"[yellow]not logged to MLflow[/yellow]: {exc}", highlight=False)
    else:
        console.print(f"MLflow: run {report['mlflow_run_id']} (cca.step=unknown_intent_eval) "
                      f"at {s.tracking_uri}")
        if json_out:
            json_out.write_text(json.dumps(report, indent=2))
    return report


def feedback_cmd(
    ticket_id: Annotated[str, typer.Argument(help="A ticket the store holds.")],
    label: Annotated[str, typer.Argument(help="The validated label.")],
) -> None:
    """Record a validated label: stored, indexed, and counted in the cache's track record."""
    from pipelines.feedback import apply_feedback  # deferred: scikit-learn, SQLAlchemy

    s = settings()
    with database() as db:
        result = apply_feedback(s, db, ticket_id, label)
    console.print(result)

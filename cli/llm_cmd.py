"""``cca llm``: the local LLM for development and the demo (``serve``, ``model``), and the
acceptance rule that decides which LLM answers may route a ticket (``calibrate``, ``rules``)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from cascade.llm_local import MODEL_SIZE, LocalLLMServer, model_file, model_path
from cca.errors import InputError, StateError
from cca.settings import Settings
from cli.common import console, database, print_json, progress_bar, settings, stdout
from cli.data import LabelCol, TextCol
from cli.evaluate_llm_cmd import endpoint
from pipelines.read_tickets import Columns, read_ticket_file

if TYPE_CHECKING:
    from cascade.llm_acceptance import AcceptanceRule
    from cca.store import Database

app = typer.Typer(help="The LLM: its acceptance rule (calibrate, rules) and the local "
                       "llama.cpp server on the CPU (serve, model).", no_args_is_help=True)


def prepare_model(s: Settings) -> Path:
    """The verified GGUF, with a progress bar while it is joined or its sha256 checked."""
    what = "verifying model" if model_path(s).is_file() else "joining model chunks"
    with Progress(TextColumn(what), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=True,
                  disable=bool(os.environ.get("CCA_NO_PROGRESS"))) as bar:
        task = bar.add_task(what, total=MODEL_SIZE)
        return model_file(s, progress=lambda n: bar.advance(task, n))


@app.command("model")
def model_cmd() -> None:
    """Join (first time) and verify the GGUF model; print its path."""
    stdout.print(str(prepare_model(settings())), highlight=False, soft_wrap=True)


@app.command("serve")
def serve_cmd(
    port: Annotated[int | None, typer.Option(min=1, max=65535,
                                             help="Port (default CCA_LLM_LOCAL_PORT, 8088).")
                    ] = None,
    threads: Annotated[int | None, typer.Option(
        min=1, help="CPU threads (default CCA_LLM_LOCAL_THREADS, else all cores).")] = None,
    ctx: Annotated[int | None, typer.Option(
        min=512, help="Context window in tokens (default CCA_LLM_LOCAL_CTX, 4096).")] = None,
) -> None:
    """Serve the local LLM until Ctrl+C; prints the CCA_LLM_* lines that point cca at it."""
    s = settings()
    model = prepare_model(s)
    server = LocalLLMServer(s, port=port, threads=threads, ctx=ctx)
    with console.status(f"starting the LLM server on {server.base_url}"):
        server.start(model)
    signal.signal(signal.SIGTERM, lambda *_: server.process and server.process.terminate())
    try:
        console.print(f"serving {model.name} on {server.base_url} ({server.threads} threads, "
                      f"context {server.ctx}); log {server.log_path}; Ctrl+C stops",
                      highlight=False, soft_wrap=True)
        for line in (f"CCA_LLM_BASE_URL={server.base_url}",
                     f"CCA_LLM_MODEL={server.models()[0]}"):
            stdout.print(line, highlight=False, soft_wrap=True)
        sys.stdout.flush()
        code = server.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        server.stop()
    if code not in (0, -signal.SIGINT, -signal.SIGTERM):
        raise StateError(f"the LLM server exited with code {code}; see {server.log_path}")


@app.command("calibrate")
def calibrate_cmd(
    data: Annotated[Path, typer.Option(help="Labelled CSV/JSONL the model has not seen.")],
    text_col: TextCol = "text",
    label_col: LabelCol = "label",
    id_col: Annotated[str | None, typer.Option(help="Ticket id column (else from the text "
                                               "and file name).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Tickets to ask the LLM about, spread "
                                       "over those the cascade passes on.")] = 300,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")
                        ] = None,
) -> None:
    """Measure the LLM on tickets the cascade would pass it; store which answers may route.

    Uses CCA_LLM_BASE_URL and CCA_LLM_MODEL (else the local server, started for the run)."""
    if not label_col:
        raise InputError("--label-col is required for calibration")
    with database() as db:
        rule, report = run_calibration(db, data, Columns(text=text_col, label=label_col,
                                                         id=id_col), limit=limit)
    stdout.print(cells_table(rule, report["target_precision"]))
    precision = report["llm_calibrated_precision"]
    stdout.print(
        f"stored rule {report['rule_id']} for {rule.model} at {rule.endpoint} (behind model "
        f"{rule.bundle_version}): {rule.overall_precision:.1%} right over {rule.answered} "
        f"answers of {rule.asked} asked; "
        + (f"{report['accepted_cells']} cell(s) accepted, measured at {precision:.1%}"
           if precision is not None else
           f"no cell reaches {report['target_precision']:.0%}: the LLM only suggests"),
        highlight=False, soft_wrap=True)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2, default=str))


@app.command("rules")
def rules_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
              ) -> None:
    """The acceptance rule in force for every endpoint and model calibrated."""
    # deferred: SQLAlchemy and scipy load only for commands that use them
    from cascade.llm_acceptance import AcceptanceRule, target_precision
    from cca.store.llm_rules_repo import latest_rules
    from evaluation.llm_eval import rule_report

    s = settings()
    with database() as db, db.begin() as conn:
        rows = latest_rules(conn)
    reports = [{"rule_id": r.id, **rule_report(AcceptanceRule.of_stored(r),
                                               target_precision(s))} for r in rows]
    if as_json:
        print_json(reports)
        return
    table = Table("rule", "endpoint", "model", "calibrated", "behind model", "asked",
                  "answered", "precision", "accepted cells", "accepted precision")
    for r in reports:
        accepted = r["llm_calibrated_precision"]
        table.add_row(str(r["rule_id"]), r["endpoint"], r["model"], r["created_at"][:19],
                      r["bundle_version"], str(r["asked"]), str(r["answered"]),
                      f"{r['overall_precision']:.1%}", str(r["accepted_cells"]),
                      "-" if accepted is None else f"{accepted:.1%}")
    stdout.print(table if reports else "no LLM endpoint calibrated: every LLM answer is "
                 "only a suggestion")


def cells_table(rule: AcceptanceRule, target: float) -> Table:
    table = Table("rank", "neighbours", "LLM conf.", "answers", "right", "precision",
                  f"bound ({rule.level:.0%})", f"routes (>= {target:.0%})",
                  title=f"{rule.model}: precision by cell (lower bound one-sided)")
    routes = {c.cell for c in rule.accepted_cells(target)}
    for c in rule.cells:  # in the order they are tested
        table.add_row(c.cell.rank, c.cell.neighbours, c.cell.confidence, str(c.n),
                      str(c.correct), f"{c.precision:.1%}", f"{c.lower_bound:.1%}",
                      "yes" if c.cell in routes else "no")
    return table


def run_calibration(db: Database, path: Path, cols: Columns, *, limit: int
                    ) -> tuple[AcceptanceRule, dict[str, Any]]:
    """Calibrate the configured endpoint on the file's tickets the store does not hold (a
    stored ticket would find its own labelled copy in the cache), store the rule, report."""
    # deferred: the cascade loads scikit-learn and onnxruntime, the LLM stage openai
    from cascade.cascade import Cascade
    from cascade.llm_acceptance import AcceptanceRule, build_rule, target_precision
    from cascade.llm_openai import OpenAICompatibleStage
    from cca.store.llm_rules_repo import latest_rule, save_rule
    from cca.store.tickets_repo import known_ids
    from evaluation.llm_eval import calibrate, passed_on, rule_report, spread

    base = settings()
    parsed = read_ticket_file(path, cols, max_chars=base.max_text_chars,
                              collapse_duplicates=False)
    parsed.refuse_if_rejected("nothing calibrated")
    with db.begin() as conn:
        stored = known_ids(conn, [t.id for t in parsed.tickets])
    tickets = [t for t in parsed.tickets if t.id not in stored]
    if not tickets:
        raise InputError(f"every ticket of {path} is already in the store (trained on or "
                         "served): calibrate on labelled tickets the model has not seen")
    truths = [parsed.labels[t.id] for t in tickets]
    with endpoint(base) as s:
        stage = OpenAICompatibleStage(s)
        cascade = Cascade.load(s, db, llm=stage)
        with progress_bar("rules, cache and classifier", total=len(tickets)) as advance:
            work, work_truths = passed_on(cascade, tickets, truths, progress=advance)
        keep = spread(len(work), limit)
        with progress_bar("asking the LLM", total=len(keep)) as advance:
            outcomes = calibrate(cascade, stage, [work[i] for i in keep],
                                 [work_truths[i] for i in keep], progress=advance)
        if not outcomes:
            raise StateError(f"the LLM answered none of the {len(keep)} tickets asked "
                             f"({stage.stats()}): nothing stored")
        rule = build_rule(outcomes, endpoint=s.llm_base_url or "", model=s.llm_model,
                          bundle_version=cascade.bundle.info.version,
                          confidence_edge=s.llm_min_confidence,
                          level=s.guarantee_confidence, asked=len(keep))
        with db.begin() as conn:
            rule_id = save_rule(conn, endpoint=rule.endpoint, model=rule.model,
                                bundle_version=rule.bundle_version, sample_size=rule.asked,
                                answered=rule.answered,
                                overall_precision=rule.overall_precision, rule=rule.to_json())
            stored = latest_rule(conn, rule.endpoint, rule.model)
        if stored is not None and stored.id == rule_id:  # as stored, with its time
            rule = AcceptanceRule.of_stored(stored)
        stats = stage.stats()
    report = {"rule_id": rule_id, **rule_report(rule, target_precision(base)),
              "data": str(path), "tickets_in_file": len(parsed.tickets),
              "left_out_in_store": len(parsed.tickets) - len(tickets),
              "passed_on": len(work), "llm_stats": stats}
    return rule, report

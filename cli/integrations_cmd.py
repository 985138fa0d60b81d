"""``cca worker`` and ``cca integrations``: the ticketing loop's workers and its dead letters."""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
from typing import Annotated

import typer
from rich.table import Table

from cca.errors import InputError, StateError
from cca.settings import Settings
from cli.common import console, database, print_json, settings, stdout

app = typer.Typer(help="The ticketing loop: queue, dead letters, reroutes.",
                  no_args_is_help=True)


def worker_cmd(
    workers: Annotated[int | None, typer.Option(
        min=1, help="Worker threads (default CCA_INTAKE_WORKERS: 2; at least 1).")] = None,
) -> None:
    """Run only intake workers (no HTTP): classify queued webhook events and write back.

    Scale out by running more of these beside `cca serve --intake-workers 0`; they share
    the queue in PostgreSQL. SIGTERM or Ctrl+C stops after the event in hand."""
    # deferred: the embedded server's wheel is heavy
    from cca.store.server import start_embedded, stop_embedded

    s = settings()
    count = workers or max(1, s.intake_workers)
    started_db = False
    if not s.database_url:  # the embedded server under CCA_HOME, shared with `cca serve`
        message = start_embedded(s)
        started_db = "already running" not in message
    try:
        _work(s, count)
    finally:
        if started_db:
            console.print(stop_embedded(s))


def _work(s: Settings, count: int) -> None:
    # This process serves no /metrics. Inheriting a service's PROMETHEUS_MULTIPROC_DIR would
    # leave its gauge files there, summed into the service's figures even after a kill -9.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # deferred: the runtime loads the model, SQLAlchemy and the cascade
    from serving.batcher import MicroBatcher
    from serving.logs import configure
    from serving.metrics import ServiceMetrics
    from serving.runtime import Runtime

    configure()  # JSON lines on stderr, as the service logs
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: where is it?
    runtime = Runtime.start(s, ServiceMetrics(), spool_prefix="intake")
    batcher = MicroBatcher(runtime.engine.handle, s.serve_batch_max_size, 0.0)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        runtime.start_intake(batcher.run_sync, count)
        if runtime.intake is None:
            raise StateError("no integration is configured: set a CCA_<VENDOR>_WEBHOOK_SECRET "
                             "or a vendor's CCA_<VENDOR>_URL and credentials")
        console.print(f"{count} intake worker(s) running; Ctrl+C stops")
        stop.wait()
    finally:
        runtime.close()


@app.command("dead-letters")
def dead_letters_cmd(
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 100,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Events that could not be written back, with the reason (oldest first)."""
    from cca.store.intake_repo import dead_letters  # deferred: SQLAlchemy

    with database() as db, db.begin() as conn:
        rows = dead_letters(conn, limit)
    if json_out:
        print_json([{**vars(r), "received_at": r.received_at.isoformat(),
                     "died_at": r.died_at.isoformat() if r.died_at else None} for r in rows])
        return
    if not rows:
        console.print("no dead letters")
        return
    table = Table("id", "source", "ticket", "attempts", "since", "reason")
    for r in rows:
        table.add_row(str(r.id), r.source, r.ticket_id, str(r.attempts),
                      f"{r.received_at:%Y-%m-%d %H:%M}", r.reason)
    stdout.print(table)


@app.command("replay")
def replay_cmd(
    event_ids: Annotated[list[int], typer.Argument(help="Dead-letter id(s) to send again.")],
) -> None:
    """Put dead letters back in the queue (after fixing what their reason says)."""
    from cca.store.intake_repo import replay  # deferred: SQLAlchemy

    with database() as db, db.begin() as conn:
        missing = [i for i in event_ids if not replay(conn, i)]
        if missing:
            raise InputError(f"not on the dead-letter list: {', '.join(map(str, missing))} "
                             "(see `cca integrations dead-letters`)")
    console.print(f"{len(event_ids)} event(s) queued again; a worker sends them shortly")


@app.command("status")
def status_cmd(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Queue depth, oldest waiting event, dead letters, and the reroute rate per stage
    (the share of auto-routed tickets an agent moved; the target is under 5 %)."""
    # deferred: SQLAlchemy
    from cca.store.intake_repo import queue_stats
    from evaluation.reroutes import reroute_report

    with database() as db:
        with db.begin() as conn:
            stats = queue_stats(conn)
        report = reroute_report(db)
    if json_out:
        print_json({"queue": vars(stats), "reroutes": report})
        return
    console.print(f"waiting {stats.pending} (+{stats.processing} in hand), oldest "
                  f"{stats.oldest_age_s:.1f} s, dead letters {stats.dead}")
    table = Table("source", "stage", "routed", "rerouted", "rate")
    for r in report["by_stage"]:
        table.add_row(r["source"], r["stage"], str(r["routed"]), str(r["rerouted"]),
                      f"{r['rate']:.1%}")
    stdout.print(table)
    if report["rate"] is not None:
        verdict = "within" if report["within_target"] else "OVER"
        console.print(f"rerouted {report['rerouted']} of {report['routed']} auto-routed "
                      f"tickets ({report['rate']:.1%}): {verdict} the {report['target']:.0%} "
                      "target")

"""What a served batch costs, without HTTP: CPU per ticket of the service's engine by batch size.

The service classifies whatever queued up while its cascade thread was busy as one batch, so
under load a request's cost is (fixed cost per batch) / (batch size) + (cost per ticket).
This runs ``serving.engine.Engine.handle`` in-process (replay lookup, cascade, audit spool,
Redis writes: the path a request takes after HTTP) on fresh Banking77 tickets, and fits the
two costs. Process CPU counts every thread (the spool's and the idempotency lookups').

Needs a promoted model in CCA_HOME (``make run``), Redis and the database. Usage:

    uv run python benchmarks/engine_batch.py [--sizes 1,2,4,8,16] [--tickets 400] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cca.settings import get_settings
from cca.tickets import Ticket
from pipelines.banking77 import banking77_file
from pipelines.read_tickets import Columns, read_ticket_file
from serving.batch import Job, Served, audit_fsyncs
from serving.metrics import ServiceMetrics
from serving.runtime import Runtime

_GAP_S = 0.004  # between batches, as under load: the spool and Redis threads get their turn


def _run(runtime: Runtime, texts: list[str], size: int, tickets: int, start: int) -> dict:
    batches = max(1, tickets // size)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    thread0 = time.thread_time()
    for b in range(batches):
        jobs = [Job(Ticket(id=uuid.uuid4().hex, body=texts[(start + b * size + i) % len(texts)]),
                    "bench", "engine-batch", "classify") for i in range(size)]
        served = [s for s in runtime.engine.handle(jobs) if isinstance(s, Served)]
        for durable in audit_fsyncs(served):
            durable.result()  # answered only once audited, as the service does
        time.sleep(_GAP_S)
    n = batches * size
    return {
        "batch_size": size, "tickets": n,
        "process_cpu_ms_per_ticket": round((time.process_time() - cpu0) * 1000 / n, 3),
        "engine_thread_cpu_ms_per_ticket": round((time.thread_time() - thread0) * 1000 / n, 3),
        "wall_ms_per_batch": round(
            (time.perf_counter() - wall0 - batches * _GAP_S) * 1000 / batches, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,2,4,8,16", help="batch sizes, comma-separated")
    parser.add_argument("--tickets", type=int, default=400, help="tickets per batch size")
    parser.add_argument("--workers", type=int, default=2,
                        help="the service's workers: each gets its share of the cores")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    if not sizes or min(sizes) < 1 or args.tickets < max(sizes):
        parser.error("--sizes must be positive and --tickets at least the largest size")

    settings = get_settings().model_copy(update={"serve_workers": args.workers})
    texts = [t.body for t in read_ticket_file(banking77_file(settings, "test"),
                                              Columns(text="text"), source="bench").tickets]
    runtime = Runtime.start(settings, ServiceMetrics())  # warms the models up
    try:
        start = _run(runtime, texts, 2, 60, 0)["tickets"]  # statements get prepared
        rows = []
        for size in sizes:
            row = _run(runtime, texts, size, args.tickets, start)
            start += row["tickets"]
            rows.append(row)
            print(f"batch {size:3d}: {row['process_cpu_ms_per_ticket']:.2f} CPU ms/ticket "
                  f"(engine thread {row['engine_thread_cpu_ms_per_ticket']:.2f}), "
                  f"{row['wall_ms_per_batch']:.2f} ms wall/batch", flush=True)
    finally:
        runtime.close()
    fit = {}
    if len(sizes) > 1:  # cpu per ticket = fixed / size + per_ticket
        slope, intercept = np.polyfit([1 / r["batch_size"] for r in rows],
                                      [r["process_cpu_ms_per_ticket"] for r in rows], 1)
        fit = {"fixed_cpu_ms_per_batch": round(float(slope), 2),
               "cpu_ms_per_ticket": round(float(intercept), 2)}
        print(f"fit: {fit['fixed_cpu_ms_per_batch']} CPU ms per batch + "
              f"{fit['cpu_ms_per_ticket']} per ticket")
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "workers": args.workers, "embedding_threads": runtime.cascade.settings.embedding_threads,
        "rows": rows, "fit": fit,
    }
    out = args.out or settings.reports_dir / "benchmarks" / "engine_batch.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()

"""Benchmark the cascade in-process: batched throughput, single-ticket latency, peak memory.

Needs a trained model in CCA_HOME (run `make run` first). Prints the numbers and writes a
JSON report. Usage:

    uv run python benchmarks/cascade.py [--tickets N] [--single N] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cascade.cascade import Cascade
from cca.settings import get_settings
from cca.store import open_database
from cca.store.audit import append_decisions
from cca.store.tickets_repo import upsert_tickets
from pipelines.banking77 import banking77_file
from pipelines.read_tickets import Columns, read_ticket_file


def _percentiles(ms: list[float]) -> dict[str, float]:
    return {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=3080, help="tickets for the batched run")
    parser.add_argument("--batch-sizes", default="64,256", help="comma-separated")
    parser.add_argument("--single", type=int, default=500, help="tickets for latency")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    settings = get_settings()
    db = open_database(settings)
    t0 = time.perf_counter()
    cascade = Cascade.load(settings, db)
    load_s = time.perf_counter() - t0
    parsed = read_ticket_file(banking77_file(settings, "test"), Columns(text="text"),
                              source="bench", collapse_duplicates=False)
    pool = parsed.tickets
    tickets = [pool[i % len(pool)].model_copy(update={"id": f"bench-{i}"})
               for i in range(args.tickets)]
    cascade.classify_batch(tickets[:64])  # warm-up: sessions, caches, JIT paths

    batched = {}
    for size in (int(x) for x in args.batch_sizes.split(",")):
        start = time.perf_counter()
        for i in range(0, len(tickets), size):
            cascade.classify_batch(tickets[i : i + size])
        batched[str(size)] = round(len(tickets) / (time.perf_counter() - start), 1)

    # The same batched run with the decision audit and ticket rows written to PostgreSQL.
    start = time.perf_counter()
    for i in range(0, len(tickets), 256):
        chunk = tickets[i : i + 256]
        decisions = cascade.classify_batch(chunk)
        with db.begin() as conn:
            upsert_tickets(conn, chunk)
            append_decisions(conn, list(zip(chunk, decisions, strict=True)))
    with_audit = round(len(tickets) / (time.perf_counter() - start), 1)

    latencies, stage_ms = [], {}
    step = max(1, len(pool) // args.single)
    for ticket in pool[::step][: args.single]:
        start = time.perf_counter()
        decision = cascade.classify(ticket)
        latencies.append((time.perf_counter() - start) * 1000)
        for stage, ms in decision.timings_ms.items():
            stage_ms.setdefault(stage, []).append(ms)

    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "model_version": cascade.version,
        "cascade_load_s": round(load_s, 2),
        "batched_tickets": len(tickets),
        "throughput_per_s": batched,
        "throughput_with_audit_per_s": with_audit,
        "single_ticket_latency_ms": _percentiles(latencies),
        "single_ticket_samples": len(latencies),
        "stage_mean_ms": {k: round(statistics.fmean(v), 3) for k, v in stage_ms.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    out = args.out or settings.reports_dir / "benchmarks" / "cascade.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"written to {out}")
    db.dispose()


if __name__ == "__main__":
    main()

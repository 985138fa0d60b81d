"""Benchmark the data lifecycle on Banking77 train in a fresh home: each step's rate.

Imports the train split into a new CCA_HOME (embedded PostgreSQL, Redis on CCA_REDIS_URL),
then times sanitize, dedup, validate and the incremental index (cache model with HNSW, and
the deep model), then an incremental re-run with 100 changed tickets. Prints the numbers and
writes a JSON report (to the default home's reports, not the throwaway one). The fresh home
also distils its static embedding table once (~15-25 s, inside the index step). Usage:

    uv run python benchmarks/lifecycle.py [--home PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from cca.departments import load_department_map
from cca.settings import Settings, get_settings
from cca.store import open_database
from pipelines import lifecycle
from pipelines.banking77 import banking77_file
from pipelines.import_tickets import import_parsed
from pipelines.read_tickets import Columns, read_ticket_file

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="a new CCA_HOME (default: tmp)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="cca-bench-"))
    settings = Settings(home=home,
                        department_map=PROJECT_ROOT / "rules" / "departments" / "banking77.yaml")
    db = open_database(settings)
    parsed = read_ticket_file(banking77_file(settings, "train"),
                              Columns(text="text", label="category"), source="banking77-train")
    departments = load_department_map(settings.department_map)
    report, seconds = _timed(import_parsed, db, parsed, departments)
    n = report.inserted
    steps: dict[str, dict] = {"import": {"tickets": n, "seconds": round(seconds, 2)}}
    for name, fn in (("sanitize", lifecycle.sanitize_pending), ("dedup", lifecycle.dedup_pending),
                     ("validate", lifecycle.validate_pending)):
        out, seconds = _timed(fn, settings, db)
        steps[name] = {"tickets": n, "seconds": round(seconds, 2),
                       "per_second": round(n / seconds, 1), "report": out}
    out, seconds = _timed(lifecycle.index_pending, settings, db)
    steps["index"] = {"seconds": round(seconds, 2), "models": out["models"]}

    # Incremental: 100 tickets change; only they are redone.
    with db.begin() as conn:
        conn.execute(sa.text(
            "UPDATE tickets SET body = body || ' (updated)', content_hash = md5(random()::text) "
            "WHERE id IN (SELECT id FROM tickets ORDER BY id LIMIT 100)"))
    out, seconds = _timed(lifecycle.prepare, settings, db)
    steps["incremental_100_changed"] = {"seconds": round(seconds, 2),
                                        "index": out["index"]["models"]}
    db.dispose()

    result = {
        "benchmark": "lifecycle",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "home": str(home),
        "steps": steps,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    for name, step in steps.items():
        rate = step.get("per_second")
        shown = f"  {rate:8.1f} tickets/s" if rate else ""
        print(f"{name:>26}: {step['seconds']:7.2f} s{shown}")
    for m in steps["index"]["models"]:
        print(f"{'index ' + m['model_id']:>40}: {m['embedded']} in {m['seconds']} s = "
              f"{m['per_second']} tickets/s")
    out_path = args.out or get_settings().reports_dir / "benchmarks" / "lifecycle.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2, default=str))
    print(f"report: {out_path}")


if __name__ == "__main__":
    main()

"""Load-test the HTTP service: latency, throughput, errors and memory of `cca serve`.

Starts `cca serve` on a free port (its own process tree), waits for /readyz, warms up, then
runs the phases and writes a JSON report. Needs a trained model in CCA_HOME (`make run`),
Redis, and the Banking77 test split (cycled). The load generator is this process: aiohttp
with keep-alive connections (one per virtual client), request bodies built before each
timed loop, every ticket id new (a repeated id + content would measure the replay path).

    1. one client, sequential /classify            -> p50/p95/p99 ms, req/s
    2a. --clients clients offering --paced-rate req/s together (open loop) -> p50/p95/p99 ms
        from each request's scheduled time, errors: the latency targets at 200 req/s
    2b. the same clients, each sending again as soon as answered (closed loop) -> req/s at
        saturation: the throughput target (its latency is queueing: 20 / req/s on average)
    3. /batch_classify, batches of 64 and 256, --batch-concurrency in flight -> tickets/s
    4. --soak: open loop at --rate req/s of mixed classify / batch / feedback / webhook
       traffic, Redis and PostgreSQL restarted in the middle -> 5xx inside and outside the
       restart windows, audit records lost, per-minute percentiles, RSS of the server's
       process tree every 10 s, growth minute 1 -> last

The server runs with CCA_RATE_LIMIT_PER_S=CCA_RATE_LIMIT_BURST=100000 (the per-client limit
would otherwise refuse the benchmark's single client) and CCA_NO_PROGRESS=1. With a soak it
also gets its own redis-server (CCA_REDIS_URL, a free port) and a Zendesk stand-in for the
webhooks (benchmarks/load_soak.py says what the soak sends, restarts and counts).

--duration: phase 2's seconds (default 30); with --soak or --soak-only it is the soak's
length in seconds instead (phase 2 then takes --phase2-duration), so the issue's
`--soak --duration 3600` is a one-hour soak. Without --duration the soak lasts --soak-minutes.
Restarts (--soak-restarts): Redis at a third and PostgreSQL at two thirds of the soak by
default, e.g. `redis@1200,postgres@2400`, or `none`. Usage:

    uv run python benchmarks/serve_load.py [--clients 20] [--duration 30]
    uv run python benchmarks/serve_load.py --soak-only --duration 3600   # the 1-hour soak
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from load_client import (
    Bodies,
)
from load_machine import (
    cpu_model,
    git,
    loadavg,
    mem_total_mb,
    other_trees,
    psutil,
    self_cpu_s,
)
from load_phases import Bench
from load_server import SERVER_ENV, Server, free_port
from load_soak import (
    Faults,
    MixedSoak,
    PrivateRedis,
    ZendeskStandIn,
    audit_count,
    labelled,
    usage_trees,
)

from cca.settings import get_settings
from pipelines.banking77 import banking77_file

TARGETS = {
    "sequential_p95_ms": 25.0,
    "concurrent_p95_ms": 50.0,
    "concurrent_p99_ms": 100.0,
    "concurrent_req_per_s": 200.0,
    "batch_tickets_per_s": 500.0,
    "soak_5xx_outside_restart_windows": 0,
    "soak_audit_lost": 0,
    "soak_rss_growth_pct": 10.0,
}
PHASES = ("sequential", "paced", "concurrent", "batch")



def _texts(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return [row["text"] for row in csv.DictReader(f) if row["text"].strip()]


def _verdicts(report: dict[str, Any]) -> dict[str, bool]:
    v: dict[str, bool] = {}
    if (p := report.get("sequential")) and p["p95"] is not None:
        v["sequential_p95_ms<=25"] = p["p95"] <= TARGETS["sequential_p95_ms"]
    # 20 clients: the latency targets at 200 req/s offered (paced), the throughput target as
    # what they get when each sends again at once (closed loop, the saturation point).
    if (p := report.get("paced")) and p["p95"] is not None:
        v["paced_p95_ms<=50"] = p["p95"] <= TARGETS["concurrent_p95_ms"]
        v["paced_p99_ms<=100"] = p["p99"] <= TARGETS["concurrent_p99_ms"]
        v["paced_errors==0"] = p["errors"] == 0
    if (p := report.get("concurrent")) and p["p95"] is not None:
        v["concurrent_req_per_s>=200"] = p["req_per_s"] >= TARGETS["concurrent_req_per_s"]
        v["concurrent_errors==0"] = p["errors"] == 0
    for size, p in (report.get("batch") or {}).items():
        v[f"batch_{size}_tickets_per_s>=500"] = p["tickets_per_s"] >= TARGETS["batch_tickets_per_s"]
    if p := report.get("soak"):
        v["soak_5xx_outside_restart_windows==0"] = p["5xx_outside_windows"] == 0
        v["soak_audit_lost==0"] = (p["audit"]["lost"] == 0 and p["audit"]["webhooks_lost"] == 0
                                   and p["audit"]["duplicate_rows"] == 0)
        v["soak_rss_growth_pct<10"] = (p["rss_growth_pct"] is not None
                                      and p["rss_growth_pct"] < TARGETS["soak_rss_growth_pct"])
    return v


def _print_phase(name: str, p: dict[str, Any]) -> None:
    u = p["usage"]
    print(f"{name}: {p.get('requests')} requests, p50 {p['p50']} / p95 {p['p95']} / "
          f"p99 {p['p99']} ms, {p['req_per_s']} req/s, errors {p['errors']}; "
          f"generator {u['generator_cpu_cores']} cores, server {u['server_cpu_cores']} cores "
          f"({u.get('server_cpu_ms_per_unit')} CPU ms/request), unrelated load "
          f"{u['unrelated_cpu_cores']} cores, stolen by the host {u.get('steal_cores')} cores",
          flush=True)
    if b := p.get("by_second"):
        print(f"  by second: p95 over {b['seconds_p95_over_ms']:g} ms in "
              f"{b['seconds_p95_over']} of {b['seconds']} s; worst second "
              f"{b['worst_second']}: p95 {b['worst_second_p95_ms']} ms", flush=True)


async def _run(args: argparse.Namespace, report: dict[str, Any], settings) -> None:
    port = args.port or free_port()
    log_path = settings.reports_dir / "serve_load_server.log"
    server = Server(settings.home, port, args.workers, log_path)
    report["server"] = {"command": " ".join(server.cmd), "port": port,
                        "env": SERVER_ENV, "log": str(log_path)}
    texts = _texts(args.data or banking77_file(settings, "test"))
    run_id = uuid.uuid4().hex[:10]
    report["run_id"], report["texts"] = run_id, len(texts)
    bodies = Bodies(texts, run_id)
    soak = _soak_services(args, server) if args.soak or args.soak_only else None
    print(f"starting: {report['server']['command']} (log {log_path})", flush=True)
    server.start()
    try:
        report["server"]["ready_after_s"] = round(await server.wait_ready(), 1)
        others = other_trees(settings)
        bench = Bench(args, server, bodies, others)
        await bench.warm_up()
        idle = server.tree.sample()
        report["server"]["rss_mb_after_warmup"] = idle["rss_mb"]
        report["server"]["processes_after_warmup"] = idle["processes"]
        print(f"ready after {report['server']['ready_after_s']} s; server tree RSS "
              f"{idle['rss_mb']} MB over {len(idle['processes'])} processes", flush=True)
        phases = set() if args.soak_only else set(args.phases)
        if "sequential" in phases:
            report["sequential"] = await bench.sequential()
            _print_phase("1 sequential /classify", report["sequential"])
        if "paced" in phases:
            report["paced"] = await bench.paced()
            _print_phase(f"2a {args.clients} clients /classify at {args.paced_rate:g} req/s "
                         "offered", report["paced"])
        if "concurrent" in phases:
            report["concurrent"] = await bench.concurrent()
            _print_phase(f"2b {args.clients} clients /classify, closed loop",
                         report["concurrent"])
        if "batch" in phases:
            report["batch"] = await bench.batched()
            for size, p in report["batch"].items():
                u = p["usage"]
                print(f"3 /batch_classify x{size}: {p['tickets']} tickets, "
                      f"{p['tickets_per_s']} tickets/s, request p50 {p['request_ms']['p50']} "
                      f"ms, errors {p['errors']}; generator {u['generator_cpu_cores']} cores, "
                      f"server {u['server_cpu_cores']} cores ({u['server_cpu_ms_per_unit']} "
                      f"CPU ms/ticket), unrelated load {u['unrelated_cpu_cores']} cores",
                      flush=True)
        if soak is not None:
            report["soak"] = await _soak(args, settings, bench, run_id, soak)
        report["server"]["rss_mb_at_end"] = server.tree.sample()["rss_mb"]
    finally:
        server.stop()
        if soak is not None:
            soak[0].kill()
            soak[1].stop()


def _soak_services(args: argparse.Namespace, server: Server
                   ) -> tuple[PrivateRedis, ZendeskStandIn]:
    """The soak's own redis-server (restarted in the middle; never the shared one) and a
    Zendesk stand-in for the webhooks, both in the server's environment."""
    redis, zd = PrivateRedis(), ZendeskStandIn()
    redis.start()
    zd.start()
    server.env.update({"CCA_REDIS_URL": redis.url,
                       "CCA_ZENDESK_WEBHOOK_SECRET": zd.webhook_secret,
                       "CCA_ZENDESK_URL": zd.url, "CCA_ZENDESK_EMAIL": zd.user,
                       "CCA_ZENDESK_TOKEN": zd.secret})
    return redis, zd


def _restart_plan(args: argparse.Namespace, seconds: float) -> list[tuple[str, float]]:
    if args.soak_restarts == "none":
        return []
    if args.soak_restarts is None:
        return [("redis", seconds / 3), ("postgres", 2 * seconds / 3)]
    plan = [(what.strip(), float(at)) for what, at in
            (x.split("@") for x in args.soak_restarts.split(",") if x.strip())]
    if bad := [w for w, _ in plan if w not in ("redis", "postgres")]:
        raise SystemExit(f"--soak-restarts: unknown {bad}; use redis@S,postgres@S or none")
    return plan


async def _soak(args: argparse.Namespace, settings, bench: Bench, run_id: str,
                services: tuple[PrivateRedis, ZendeskStandIn]) -> dict[str, Any]:
    redis, zd = services
    seconds = args.soak_s
    faults = Faults(settings, redis, _restart_plan(args, seconds), args.restart_down_s,
                    args.restart_grace_s)
    bench.others = usage_trees(redis)  # PostgreSQL's pid changes with its restart
    rows = labelled(args.data or banking77_file(settings, "test"))
    print(f"4 soak: {args.rate} req/s ({args.soak_mix}) for {seconds:g} s; restarts "
          f"{faults.plan or 'none'}, each down {args.restart_down_s:g} s ...", flush=True)
    p = await MixedSoak(args, bench, rows, run_id, zd, faults).run(seconds)
    for m in p["per_minute"]:
        print(f"  minute {m['minute']}: {m['requests']} req, classify p50 {m['p50']} / p95 "
              f"{m['p95']} / p99 {m['p99']} ms, 5xx/failed {m['5xx_or_failed']}, other "
              f"non-2xx {m['other_non_2xx']}; server {m.get('server_cpu_cores')} cores, "
              f"machine {m.get('machine_busy_cores')} cores busy", flush=True)
    for f in p["restarts"]:
        print(f"  {f['what']}: stopped at {f['stop_s']} s, up at {f['up_s']} s; window "
              f"{f['window_s'][0]}-{f['window_s'][1]} s", flush=True)
    p["audit"] = await asyncio.to_thread(audit_count, settings, p.pop("answered"),
                                         p.pop("webhooks_accepted"), args.audit_wait_s)
    a = p["audit"]
    print(f"4 soak: {p['requests']} requests, {p['achieved_req_per_s']} req/s; by kind "
          f"{p['status_by_kind']}", flush=True)
    print(f"  5xx/failed inside restart windows {p['5xx_inside_windows'] or 0}, outside "
          f"{p['5xx_outside_windows']}; audit: {a['answered_200_tickets']} tickets answered, "
          f"{a['audited_tickets']} audited, lost {a['lost']}, duplicate rows "
          f"{a['duplicate_rows']}; webhooks {a['webhooks_accepted']} accepted, "
          f"{a['webhooks_audited']} audited (waited {a['waited_s']} s)", flush=True)
    print(f"  RSS minute 1 {p['rss_mb_minute_1_mean']} MB -> last minute "
          f"{p['rss_mb_last_minute_mean']} MB ({p['rss_growth_pct']}%); generator "
          f"{p['usage']['generator_cpu_cores']} cores, server {p['usage']['server_cpu_cores']}"
          f" cores, unrelated load {p['usage']['unrelated_cpu_cores']} cores; at most "
          f"{p['max_in_flight']} requests in flight", flush=True)
    return p


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--workers", type=int, default=2,
                        help="cca serve --workers (2: the measured best on 2 cores)")
    parser.add_argument("--requests", type=int, default=500, help="phase 1 requests")
    parser.add_argument("--clients", type=int, default=20, help="phase 2 concurrent clients")
    parser.add_argument("--paced-rate", type=float, default=200.0,
                        help="phase 2a: requests/s the clients offer between them")
    parser.add_argument("--batch-concurrency", type=int, default=2,
                        help="phase 3: batch requests in flight (a bulk client pipelines)")
    parser.add_argument("--duration", type=float, default=None,
                        help="phase 2 seconds (default 30); with --soak/--soak-only the "
                             "soak's seconds")
    parser.add_argument("--phase2-duration", type=float, default=30.0,
                        help="phase 2 seconds when --duration is the soak's")
    parser.add_argument("--batch-sizes", default="64,256", help="phase 3, comma-separated")
    parser.add_argument("--batch-tickets", type=int, default=3072,
                        help="phase 3 tickets per batch size")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"phases 1-3 to run, comma-separated (default: {','.join(PHASES)})")
    parser.add_argument("--soak", action="store_true", help="after phases 1-3, run the soak")
    parser.add_argument("--soak-only", action="store_true", help="run only the soak")
    parser.add_argument("--soak-minutes", type=float, default=10.0,
                        help="soak length when --duration is not given")
    parser.add_argument("--soak-mix", default="classify=85,batch=5,feedback=5,webhook=5",
                        help="soak arrivals by kind, relative weights")
    parser.add_argument("--soak-batch-size", type=int, default=4,
                        help="tickets per soak /batch_classify request")
    parser.add_argument("--soak-restarts", default=None,
                        help="e.g. redis@1200,postgres@2400 (s into the soak), or none "
                             "(default: Redis at 1/3, PostgreSQL at 2/3 of the soak)")
    parser.add_argument("--restart-down-s", type=float, default=5.0,
                        help="how long each restarted server stays down")
    parser.add_argument("--restart-grace-s", type=float, default=30.0,
                        help="a restart window ends this long after the server is back")
    parser.add_argument("--audit-wait-s", type=float, default=60.0,
                        help="stop waiting for audit rows after this long without a new one")
    parser.add_argument("--rate", type=float, default=100.0, help="soak arrivals per second")
    parser.add_argument("--soak-connections", type=int, default=512,
                        help="soak keep-alive connection pool (the server's max_concurrency)")
    parser.add_argument("--rss-every", type=float, default=10.0, help="soak RSS sample, s")
    parser.add_argument("--data", type=Path, default=None,
                        help="CSV with a text column (default: the Banking77 test split)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.batch_sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    soaking = args.soak or args.soak_only
    args.phase2_s = args.phase2_duration if soaking or args.duration is None else args.duration
    args.soak_s = (args.duration if soaking and args.duration is not None
                   else args.soak_minutes * 60)
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    if unknown := sorted(set(args.phases) - set(PHASES)):
        parser.error(f"unknown phase(s) {', '.join(unknown)}; choose from {', '.join(PHASES)}")

    settings = get_settings()
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git(),
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(),
                    "mem_total_mb": mem_total_mb(), "platform": platform.platform(),
                    "python": platform.python_version(), "aiohttp": aiohttp.__version__,
                    "psutil": getattr(psutil, "__version__", None)},
        "home": str(settings.home),
        "loadavg_start": loadavg(),
        "targets": TARGETS,
        "options": {k: v for k, v in vars(args).items() if k not in ("out", "data")},
    }
    cpu0, t0 = self_cpu_s(), time.perf_counter()
    uvloop.run(_run(args, report, settings))  # a lighter loop: less CPU taken from the server
    report["loadavg_end"] = loadavg()
    report["generator_cpu_s_total"] = round(self_cpu_s() - cpu0, 1)
    report["wall_s_total"] = round(time.perf_counter() - t0, 1)
    report["verdicts"] = _verdicts(report)
    out = args.out or settings.reports_dir / "serve_load.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"load average {report['loadavg_start']} -> {report['loadavg_end']}")
    probes = [ms for phase in _phases(report)
              for ms in phase["usage"]["cpu_probe_ms_before_after"]]
    if probes:
        print(f"CPU speed probe around the phases: {min(probes)}-{max(probes)} ms "
              "(the same loop; lower is a faster machine)")
    for name, ok in report["verdicts"].items():
        print(f"  {'PASS' if ok else 'FAIL'} {name}")
    print(f"written to {out}")


def _phases(report: dict[str, Any]) -> list[dict[str, Any]]:
    found = [report[k] for k in ("sequential", "paced", "concurrent", "soak") if k in report]
    return [p for p in [*found, *report.get("batch", {}).values()] if "usage" in p]


if __name__ == "__main__":
    main()

"""Benchmark the ticketing loop: signed Zendesk webhooks in, routing written back.

Starts `cca serve` (own process tree, free port, CCA_HOME with a trained model: `make run`;
Redis) against a Zendesk stand-in on loopback (tests/standins/zendesk.py, in this process,
timestamping each applied PUT; TCP_NODELAY on its replies, else its http.server's two sends
per reply cost a delayed ACK, ~40 ms, per back-to-back write: --standin-nagle), and sends
signed `ticket.created` deliveries (Banking77 test texts, ticket ids new per run) over
keep-alive connections, open loop, latency from each delivery's scheduled send time:

    1. backlog, for each W of --workers: --backlog events accepted by a service with intake
       workers off, then one with CCA_INTAKE_WORKERS=W started -> events/s drained (first
       to last write-back; and from /readyz, as the workers start before it)
    2. accept, on the first W's service: --rate-accept/s for --duration s -> 202 p50/p95/p99
       ms (target p95 <= 30 ms at 100/s)
    3. e2e: --rate-e2e/s for --duration s -> send to write-back applied, p50/p95/p99 ms
       (target p95 <= 1 s at 50/s)

Each phase: lost (a 202 without a note), duplicate writes (> 1 note or PUT), errors by
status, and each event's time split by the service's PostgreSQL timestamps: queued
(received -> ticket stored by a worker), classify (-> write-back row), write (-> sent),
finish (-> done). Usage:

    uv run python benchmarks/webhooks.py [--rate-accept 100] [--rate-e2e 50] [--duration 30]
        [--backlog 500] [--workers 2,1] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httptools
import sqlalchemy as sa
import uvloop
from load_client import Connection, open_connections, pcts, scrape, server_view
from load_machine import ProcTree, Usage, cpu_model, git, loadavg, mem_total_mb, other_trees
from load_server import PROJECT_ROOT, Server, free_port
from serve_load import _texts

from cca.settings import Settings, get_settings
from cca.store import open_database
from pipelines.banking77 import banking77_file

sys.path.insert(0, str(PROJECT_ROOT))  # the stand-ins live in tests/, not in the package
from tests.standins.zendesk import ZendeskStandIn

TARGETS = {"accept_p95_ms": 30.0, "e2e_p95_ms": 1000.0}
Delivery = tuple[int, dict[str, str], bytes]  # ticket id, headers, body
Result = tuple[int, float, int | str, float]  # ticket id, due (perf_counter), status, ms


class TimedZendesk(ZendeskStandIn):
    """The stand-in, noting when each ticket's write-back was applied (perf_counter)."""

    def __init__(self) -> None:
        super().__init__()
        self.applied: dict[int, list[float]] = {}
        self._applied_lock = threading.Lock()

    def _apply(self, ticket_id: int, update: dict[str, Any]) -> dict[str, Any]:
        audit = super()._apply(ticket_id, update)
        now = time.perf_counter()
        with self._applied_lock:
            self.applied.setdefault(ticket_id, []).append(now)
        return audit

    def start(self, nagle: bool = False) -> TimedZendesk:
        """http.server writes a reply's headers and body in two sends; with Nagle on, a
        client sending back to back waits for its own delayed ACK (~40 ms) between them."""
        super().start()
        assert self._server is not None
        handler: Any = self._server.RequestHandlerClass
        handler.disable_nagle_algorithm = not nagle
        return self

    def puts(self) -> Counter[int]:
        return Counter(int(r.path.split("/")[4].split(".")[0]) for r in list(self.requests)
                       if r.method == "PUT")


class Tickets:
    """New stand-in tickets and their signed `created` deliveries; ids new per run."""

    def __init__(self, zd: TimedZendesk, texts: list[str]) -> None:
        self.zd, self.texts, self.next_id = zd, texts, int(time.time()) * 100_000

    def deliveries(self, n: int) -> list[Delivery]:
        out = []
        for _ in range(n):
            tid, self.next_id = self.next_id, self.next_id + 1
            self.zd.add_ticket(tid, "", self.texts[tid % len(self.texts)])
            headers, body = self.zd.webhook("created", tid)
            out.append((tid, headers, body))
        return out


async def send(base: str, batch: list[Delivery], rate: float, conns_n: int) -> list[Result]:
    """Open loop at ``rate``/s (latency from each scheduled time), or with rate 0 as fast as
    ``conns_n`` connections go; one result per delivery."""
    results: list[Result] = []
    conns = [Connection(base) for _ in range(conns_n)]
    url = f"{base}/webhooks/zendesk"

    async def client(k: int, conn: Connection, t0: float) -> None:
        for i in range(k, len(batch), conns_n):
            tid, headers, body = batch[i]
            due = t0 + i / rate if rate else time.perf_counter()
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            try:
                status: int | str = (await conn.request("POST", url, body, headers))[0]
            except (OSError, TimeoutError, httptools.HttpParserError) as exc:
                status = type(exc).__name__
            results.append((tid, due, status, (time.perf_counter() - due) * 1000))

    try:
        await open_connections(conns, base)
        t0 = time.perf_counter() + 0.05
        await asyncio.gather(*(client(k, c, t0) for k, c in enumerate(conns)))
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    return results


async def settle(zd: TimedZendesk, tickets: list[int], quiet_s: float) -> None:
    """Until every ticket is written back, or none more was for ``quiet_s`` seconds."""
    waiting, last = set(tickets), time.monotonic()
    while waiting and time.monotonic() - last < quiet_s:
        await asyncio.sleep(0.05)
        done = {t for t in waiting if t in zd.applied}
        if done:
            waiting -= done
            last = time.monotonic()


def breakdown(settings: Settings, tickets: list[int]) -> dict[str, Any]:
    """Where each event's time went, by the service's own PostgreSQL timestamps (ms)."""
    ms = "EXTRACT(EPOCH FROM {} - {}) * 1000"
    sql = sa.text(
        f"SELECT {ms.format('t.ingested_at', 'e.received_at')} AS queued, "
        f"{ms.format('w.created_at', 't.ingested_at')} AS classify, "
        f"{ms.format('w.sent_at', 'w.created_at')} AS write, "
        f"{ms.format('e.done_at', 'w.sent_at')} AS finish "
        "FROM intake_events e JOIN writebacks w ON w.event_id = e.id "
        "JOIN tickets t ON t.id = e.ticket_id WHERE e.ticket_id = ANY(:ids)")
    db = open_database(settings)
    try:
        with db.begin() as conn:
            rows = conn.execute(sql, {"ids": [f"zendesk-{t}" for t in tickets]}).all()
    finally:
        db.dispose()
    cols = ("queued", "classify", "write", "finish")
    return {"events": len(rows), **{c: pcts([float(r[i]) for r in rows if r[i] is not None])
                                    for i, c in enumerate(cols)}}


def summarise(zd: TimedZendesk, results: list[Result]) -> dict[str, Any]:
    accepted = {tid: due for tid, due, status, _ in results if status == 202}
    applied = {t: zd.applied[t][0] for t in accepted if t in zd.applied}
    puts = zd.puts()
    notes = {t: len(zd.notes(t)) for t in accepted}
    out: dict[str, Any] = {
        "sent": len(results), "accepted_202": len(accepted),
        "errors_by_status": dict(Counter(str(r[2]) for r in results if r[2] != 202)),
        "accept_ms": pcts([r[3] for r in results if r[2] == 202]),
        "writeback_ms": pcts([(applied[t] - due) * 1000 for t, due in accepted.items()
                              if t in applied]),
        "written_back": len(applied),
        "lost": sum(1 for n in notes.values() if n == 0),
        "duplicate_writes": sum(1 for t, n in notes.items() if n > 1 or puts[t] > 1)}
    if len(applied) > 1:
        first, last = min(applied.values()), max(applied.values())
        out["writeback_span_s"] = round(last - first, 2)
        out["written_per_s"] = round((len(applied) - 1) / max(last - first, 1e-9), 1)
    return out


@dataclass
class Service:
    server: Server
    base: str
    others: dict[str, ProcTree]
    ready_at: float  # perf_counter when /readyz first answered 200


class Bench:
    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args, self.settings = args, settings
        self.zd = TimedZendesk()
        self.tickets = Tickets(self.zd, _texts(banking77_file(settings, "test")))

    @contextlib.asynccontextmanager
    async def serving(self, intake_workers: int, name: str) -> AsyncIterator[Service]:
        """`cca serve --intake-workers N` against the stand-in, stopped on the way out."""
        port, zd = free_port(), self.zd
        server = Server(self.settings.home, port, self.args.serve_workers,
                        self.settings.reports_dir / f"webhooks_server_{name}.log")
        server.cmd += ["--intake-workers", str(intake_workers)]
        server.env.update({"CCA_ZENDESK_WEBHOOK_SECRET": zd.webhook_secret,
                           "CCA_ZENDESK_URL": zd.url, "CCA_ZENDESK_EMAIL": zd.user,
                           "CCA_ZENDESK_TOKEN": zd.secret})
        print(f"[{name}] {' '.join(server.cmd)} (log {server.log_path})", flush=True)
        server.start()
        try:
            ready_s = await server.wait_ready()
            print(f"[{name}] ready after {ready_s:.1f} s", flush=True)
            yield Service(server, f"http://127.0.0.1:{port}", other_trees(self.settings),
                          time.perf_counter())
        finally:
            server.stop()

    async def run(self, report: dict[str, Any]) -> None:
        self.zd.start(nagle=self.args.standin_nagle)
        try:
            for k, w in enumerate(self.args.workers):
                batch = self.tickets.deliveries(self.args.backlog)
                async with self.serving(0, f"fill-w{w}") as srv:
                    filled = await send(srv.base, batch, 0.0, self.args.connections)
                async with self.serving(w, f"w{w}") as srv:
                    report["backlog"][str(w)] = p = await self.drain(srv, filled, w)
                    _show(f"backlog, {w} intake worker(s)", p)
                    if k:
                        continue
                    for name in ("accept", "e2e"):
                        rate = getattr(self.args, f"rate_{name}")
                        report[name] = p = await self.paced(srv, rate)
                        _show(f"{name} at {rate:g}/s, {w} intake worker(s)", p)
        finally:
            self.zd.stop()

    async def drain(self, srv: Service, filled: list[Result], w: int) -> dict[str, Any]:
        """The backlog: its 202s came from the fill service (no workers), its write-backs
        (here, write-back ms spans the restart) from this one."""
        tids = [r[0] for r in filled if r[2] == 202]
        await settle(self.zd, tids, self.args.quiet)
        out = {"intake_workers": w, **summarise(self.zd, filled),
               "breakdown_ms": breakdown(self.settings, tids)}
        late = [a for a in (self.zd.applied[t][0] for t in tids if t in self.zd.applied)
                if a >= srv.ready_at]
        if late:  # the service starts its workers a moment before /readyz says ready
            span = max(late) - srv.ready_at
            out["after_ready"] = {"events": len(late), "span_s": round(span, 2),
                                  "per_s": round(len(late) / max(span, 1e-9), 1)}
        return out

    async def paced(self, srv: Service, rate: float) -> dict[str, Any]:
        batch = self.tickets.deliveries(int(rate * self.args.duration))
        before = await scrape(srv.base)
        with Usage(srv.server, srv.others, len(batch)) as u:
            results = await send(srv.base, batch, rate, self.args.connections)
            tids = [r[0] for r in results if r[2] == 202]
            await settle(self.zd, tids, self.args.quiet)
        after = await scrape(srv.base)
        return {"offered_per_s": rate, "duration_s": self.args.duration,
                "latency_from": "schedule", **summarise(self.zd, results),
                "breakdown_ms": breakdown(self.settings, tids),
                "server_view": server_view(before, after), "usage": u.report()}


def _show(name: str, p: dict[str, Any]) -> None:
    a, e, b = p["accept_ms"], p["writeback_ms"], p["breakdown_ms"]
    print(f"{name}: {p['sent']} sent, {p['accepted_202']} x 202, errors "
          f"{p['errors_by_status'] or 0}, lost {p['lost']}, duplicate writes "
          f"{p['duplicate_writes']}; written {p.get('written_per_s')} events/s first to last"
          + (f", after ready {p['after_ready']}" if "after_ready" in p else ""), flush=True)
    print(f"  202 ms p50/p95/p99 {a['p50']}/{a['p95']}/{a['p99']}; write-back ms "
          f"{e['p50']}/{e['p95']}/{e['p99']}\n  server p50/p95 ms: "
          + ", ".join(f"{k} {b[k]['p50']}/{b[k]['p95']}" for k in
                      ("queued", "classify", "write", "finish")), flush=True)
    if u := p.get("usage"):
        print(f"  cores: server {u['server_cpu_cores']}, postgres {u.get('postgres_cpu_cores')}"
              f", generator+stand-in {u['generator_cpu_cores']}, unrelated "
              f"{u['unrelated_cpu_cores']}, steal {u['steal_cores']}", flush=True)


def _verdicts(report: dict[str, Any]) -> dict[str, bool]:
    v: dict[str, bool] = {}
    if (p := report.get("accept")) and p["accept_ms"]["p95"] is not None:
        v[f"accept_p95_ms<=30 at {p['offered_per_s']:g}/s"] = p["accept_ms"]["p95"] <= 30
    if (p := report.get("e2e")) and p["writeback_ms"]["p95"] is not None:
        v[f"e2e_p95_ms<=1000 at {p['offered_per_s']:g}/s"] = p["writeback_ms"]["p95"] <= 1000
    phases = [*report["backlog"].values(), report.get("accept"), report.get("e2e")]
    v["lost==0"] = all(p["lost"] == 0 for p in phases if p)
    v["duplicate_writes==0"] = all(p["duplicate_writes"] == 0 for p in phases if p)
    return v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, kind, default in (("--rate-accept", float, 100.0), ("--rate-e2e", float, 50.0),
                                ("--duration", float, 30.0), ("--backlog", int, 500)):
        parser.add_argument(flag, type=kind, default=default)
    parser.add_argument("--workers", default="2,1",
                        help="CCA_INTAKE_WORKERS to drain the backlog with, comma-separated; "
                             "phases 2-3 run with the first")
    parser.add_argument("--serve-workers", type=int, default=None,
                        help="cca serve --workers (default: the service's, CCA_SERVE_WORKERS)")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--quiet", type=float, default=30.0,
                        help="give up waiting for write-backs after this many s without one")
    parser.add_argument("--standin-nagle", action="store_true",
                        help="leave Nagle on in the stand-in's replies (its http.server default)")
    parser.add_argument("--json", type=Path, default=None, help="report path")
    args = parser.parse_args()
    args.workers = [int(x) for x in args.workers.split(",") if x.strip()]
    settings = get_settings()
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "git": git(),
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(),
                    "mem_total_mb": mem_total_mb(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "home": str(settings.home), "loadavg_start": loadavg(), "targets": TARGETS,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "service_env": {k: v for k, v in os.environ.items() if k.startswith("CCA_")},
        "backlog": {}}
    uvloop.run(Bench(args, settings).run(report))
    report["loadavg_end"] = loadavg()
    report["verdicts"] = _verdicts(report)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.json or settings.reports_dir / "benchmarks" / f"webhooks-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"load average {report['loadavg_start']} -> {report['loadavg_end']}")
    for name, ok in report["verdicts"].items():
        print(f"  {'PASS' if ok else 'FAIL'} {name}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()

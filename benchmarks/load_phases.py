"""The load phases against a running `cca serve`: one client, open and closed loops,
batches and the soak, each returning its numbers for the report (see serve_load.py)."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp
import numpy as np
from load_client import (
    Bodies,
    Connection,
    Tally,
    client_session,
    open_connections,
    pcts,
    post,
    scrape,
    server_view,
    worst_seconds,
)
from load_machine import ProcTree, Usage, loadavg, machine_busy_s
from load_server import Server, mint_token

TOKEN_MAX_AGE_S = 50 * 60


class Bench:
    def __init__(self, args: argparse.Namespace, server: Server, bodies: Bodies,
                 others: dict[str, ProcTree]) -> None:
        self.args, self.server, self.bodies, self.others = args, server, bodies, others
        self.base = f"http://127.0.0.1:{server.port}"
        self.token_at = 0.0
        self.headers: dict[str, str] = {}

    async def fresh_token(self, force: bool = False) -> None:
        if force or time.monotonic() - self.token_at > TOKEN_MAX_AGE_S:
            token = await asyncio.to_thread(mint_token, self.server.home)
            self.headers = {"Authorization": f"Bearer {token}",
                            "Content-Type": "application/json"}
            self.token_at = time.monotonic()

    async def warm_up(self) -> None:
        await self.fresh_token(force=True)
        async with client_session(self.args.clients) as s:
            tally = Tally()
            for body in self.bodies.single("warm", 30):
                await post(s, f"{self.base}/classify", body, self.headers, tally)
            await asyncio.gather(*(post(s, f"{self.base}/classify", b, self.headers, tally)
                                   for b in self.bodies.single("warm", 4 * self.args.clients)))
            for body in self.bodies.batches("warm", 2, 64):
                await post(s, f"{self.base}/batch_classify", body, self.headers, tally)
        if tally.n_errors or not tally.ok:
            raise SystemExit(f"warm-up failed: {tally.errors}; see {self.server.log_path}")

    async def sequential(self) -> dict[str, Any]:
        await self.fresh_token()
        bodies = self.bodies.single("seq", self.args.requests)
        tally = Tally()
        conn = Connection(self.base)
        try:
            before = await scrape(self.base)
            with Usage(self.server, self.others, len(bodies)) as u:
                for body in bodies:
                    await post(conn, f"{self.base}/classify", body, self.headers, tally)
            after = await scrape(self.base)
        finally:
            await conn.close()
        return {"requests": len(bodies), **pcts(tally.ms),
                "req_per_s": round(tally.ok / u.wall, 1), "errors": tally.n_errors,
                "error_kinds": tally.errors, "replayed": tally.replayed,
                "server_view": server_view(before, after), "usage": u.report()}

    async def concurrent(self) -> dict[str, Any]:
        await self.fresh_token()
        clients, duration = self.args.clients, self.args.duration
        # Enough for 2000 req/s; past that the bodies are built in the loop (noted in the report).
        bodies = self.bodies.single("conc", int(duration * 2000))
        nxt = iter(bodies)
        extra = {"n": 0}
        tally = Tally()
        conns = [Connection(self.base) for _ in range(clients)]  # one keep-alive each

        async def client(s: Connection, stop_at: float) -> None:
            url = f"{self.base}/classify"
            while time.perf_counter() < stop_at:
                body = next(nxt, None)
                if body is None:
                    extra["n"] += 1
                    body = self.bodies.single("conc", 1)[0]
                await post(s, url, body, self.headers, tally)

        try:
            await open_connections(conns, self.base)
            before = await scrape(self.base)
            with Usage(self.server, self.others) as u:
                stop_at = time.perf_counter() + duration
                await asyncio.gather(*(client(s, stop_at) for s in conns))
            after = await scrape(self.base)
        finally:
            await asyncio.gather(*(s.close() for s in conns))
        done = u.units = tally.n
        return {"clients": clients, "requests": done, **pcts(tally.ms),
                "req_per_s": round(tally.ok / u.wall, 1), "errors": tally.n_errors,
                "error_rate": round(tally.n_errors / done, 5) if done else None,
                "error_kinds": tally.errors, "replayed": tally.replayed,
                "bodies_built_in_loop": extra["n"],
                "server_view": server_view(before, after), "usage": u.report()}

    async def paced(self) -> dict[str, Any]:
        """--clients clients offering --paced-rate requests/s between them, each on its own
        connection. Open loop: latency counts from each request's scheduled time, so a slow
        answer cannot hide the queue behind it (no coordinated omission)."""
        await self.fresh_token()
        clients, rate = self.args.clients, self.args.paced_rate
        total = int(rate * self.args.duration)
        bodies = self.bodies.single("paced", total)
        tally = Tally()
        conns = [Connection(self.base) for _ in range(clients)]
        url = f"{self.base}/classify"

        async def client(k: int, s: Connection, t0: float) -> None:
            for i in range(k, total, clients):
                due = t0 + i / rate
                if (delay := due - time.perf_counter()) > 0:
                    await asyncio.sleep(delay)
                await post(s, url, bodies[i], self.headers, tally, since=due)

        try:
            await open_connections(conns, self.base)
            before = await scrape(self.base)
            with Usage(self.server, self.others, total) as u:
                t0 = time.perf_counter() + 0.05
                await asyncio.gather(*(client(k, s, t0) for k, s in enumerate(conns)))
            after = await scrape(self.base)
        finally:
            await asyncio.gather(*(s.close() for s in conns))
        return {"clients": clients, "offered_req_per_s": rate, "requests": total,
                "latency_from": "schedule", **pcts(tally.ms),
                "by_second": worst_seconds(tally, t0),
                "req_per_s": round(tally.ok / u.wall, 1), "errors": tally.n_errors,
                "error_kinds": tally.errors, "replayed": tally.replayed,
                "server_view": server_view(before, after), "usage": u.report()}

    async def batched(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for size in self.args.batch_sizes:
            await self.fresh_token()
            n = max(1, self.args.batch_tickets // size)
            bodies = self.bodies.batches(f"b{size}", n, size)
            tally = Tally()
            conc = self.args.batch_concurrency
            conns = [Connection(self.base) for _ in range(conc)]

            async def client(mine: list[bytes], s: Connection, t: Tally) -> None:
                for body in mine:
                    await post(s, f"{self.base}/batch_classify", body, self.headers, t)

            try:
                await open_connections(conns, self.base)
                before = await scrape(self.base)
                with Usage(self.server, self.others, n * size) as u:
                    await asyncio.gather(*(client(bodies[k::conc], s, tally)
                                           for k, s in enumerate(conns)))
                after = await scrape(self.base)
            finally:
                await asyncio.gather(*(s.close() for s in conns))
            out[str(size)] = {
                "batch_size": size, "requests": n, "tickets": n * size,
                "requests_in_flight": conc,
                "tickets_per_s": round(tally.ok * size / u.wall, 1),
                "request_ms": pcts(tally.ms), "errors": tally.n_errors,
                "error_kinds": tally.errors, "server_view": server_view(before, after),
                "usage": u.report()}
        return out

    async def soak(self) -> dict[str, Any]:
        await self.fresh_token(force=True)
        rate, minutes = self.args.rate, self.args.soak_minutes
        total = int(rate * minutes * 60)
        bodies = self.bodies.single("soak", total)
        per_minute = [Tally() for _ in range(int(np.ceil(minutes)))]
        overall = Tally()
        service_ms: list[float] = []
        rss: list[dict[str, Any]] = []
        tasks: set[asyncio.Task] = set()
        lag = {"max_ms": 0.0, "late_over_10ms": 0, "max_in_flight": 0}
        url = f"{self.base}/classify"

        async def one(s: aiohttp.ClientSession, body: bytes, due: float, minute: int) -> None:
            sent = time.perf_counter()
            t = Tally()
            await post(s, url, body, self.headers, t, since=due)
            for tally in (per_minute[minute], overall):
                tally.ms.extend(t.ms)
                tally.sent.extend(t.sent)
                tally.n += t.n
                tally.ok += t.ok
                tally.replayed += t.replayed
                for k, v in t.errors.items():
                    tally.errors[k] = tally.errors.get(k, 0) + v
                for k, v in t.examples.items():
                    tally.examples.setdefault(k, v)
            if t.ok:
                service_ms.append((time.perf_counter() - sent) * 1000)

        async def sample_rss(t0: float, stop: asyncio.Event) -> None:
            last = None
            while True:
                s = self.server.tree.sample()
                now, busy = time.perf_counter(), machine_busy_s()
                row = {"t_s": round(now - t0, 1), "rss_mb": s["rss_mb"],
                       "processes": s["processes"], "loadavg": loadavg()}
                if last is not None:  # CPU over the interval: is a slow spell ours or not?
                    dt = now - last[0]
                    row["server_cpu_cores"] = round((s["cpu_s"] - last[1]) / dt, 3)
                    row["machine_busy_cores"] = round((busy - last[2]) / dt, 3)
                    row["done_per_s"] = round((overall.n - last[3]) / dt, 1)
                last = (now, s["cpu_s"], busy, overall.n)
                rss.append(row)
                try:
                    await asyncio.wait_for(stop.wait(), self.args.rss_every)
                    return
                except TimeoutError:
                    pass

        async def refresh_token(stop: asyncio.Event) -> None:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), 60)
                except TimeoutError:
                    await self.fresh_token()

        async with client_session(self.args.soak_connections) as s:
            before = await scrape(self.base)
            stop = asyncio.Event()
            with Usage(self.server, self.others, total) as u:
                t0 = time.perf_counter()
                helpers = [asyncio.create_task(sample_rss(t0, stop)),
                           asyncio.create_task(refresh_token(stop))]
                for i, body in enumerate(bodies):
                    due = t0 + i / rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    else:
                        late = -delay * 1000
                        lag["max_ms"] = max(lag["max_ms"], late)
                        lag["late_over_10ms"] += late > 10
                    task = asyncio.create_task(one(s, body, due, min(int(i / rate // 60),
                                                                     len(per_minute) - 1)))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    lag["max_in_flight"] = max(lag["max_in_flight"], len(tasks))
                if tasks:
                    await asyncio.gather(*tasks)
                stop.set()
                await asyncio.gather(*helpers)
            after = await scrape(self.base)

        def window(m: int) -> list[float]:
            return [r["rss_mb"] for r in rss if m * 60 <= r["t_s"] < (m + 1) * 60]

        def cpu_in(m: int) -> dict[str, float]:
            rows = [r for r in rss
                    if m * 60 < r["t_s"] <= (m + 1) * 60 and "server_cpu_cores" in r]
            if not rows:
                return {}
            return {k: round(float(np.mean([r[k] for r in rows])), 2)
                    for k in ("server_cpu_cores", "machine_busy_cores")}

        first, last = window(0), window(len(per_minute) - 1)
        rss_first = round(float(np.mean(first)), 1) if first else None
        rss_last = round(float(np.mean(last)), 1) if last else None
        growth = (round((rss_last - rss_first) / rss_first * 100, 2)
                  if rss_first and rss_last else None)
        return {
            "rate_per_s": rate, "minutes": minutes, "requests": total,
            "achieved_req_per_s": round(overall.n / u.wall, 1),
            "answered_2xx_per_s": round(overall.ok / u.wall, 1),
            "errors": overall.n_errors, "error_kinds": overall.errors,
            "error_examples": overall.examples,
            "replayed": overall.replayed,
            "latency_ms_from_schedule": pcts(overall.ms),
            "latency_ms_from_send": pcts(service_ms),
            "per_minute": [{"minute": m + 1, "requests": t.n,
                            "errors": t.n_errors, **pcts(t.ms), **cpu_in(m)}
                           for m, t in enumerate(per_minute)],
            "rss_mb_minute_1_mean": rss_first, "rss_mb_last_minute_mean": rss_last,
            "rss_growth_pct": growth,
            "rss_mb_min": min(r["rss_mb"] for r in rss),
            "rss_mb_max": max(r["rss_mb"] for r in rss),
            "scheduler_lag": {"max_ms": round(lag["max_ms"], 2),
                              "late_over_10ms": lag["late_over_10ms"]},
            "max_in_flight": lag["max_in_flight"],
            "rss_samples": rss, "server_view": server_view(before, after),
            "usage": u.report()}


# -- main --------------------------------------------------------------------------------

"""The load phases against a running `cca serve`: one client, open and closed loops and
batches, each returning its numbers for the report (see serve_load.py; the soak is in
load_soak.py)."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

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
from load_machine import ProcTree, Usage
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
            # feedback too: the soak posts labels with the same token
            token = await asyncio.to_thread(mint_token, self.server.home, "classify",
                                            "feedback")
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
        clients, duration = self.args.clients, self.args.phase2_s
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
        total = int(rate * self.args.phase2_s)
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

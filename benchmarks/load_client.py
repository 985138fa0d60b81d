"""The HTTP client side of benchmarks/serve_load.py: request bodies, requests, tallies.

Every phase sends the same kind of traffic and reads the same numbers back, so this module
holds the pre-encoded request bodies (unique ticket ids), one timed POST into a `Tally`,
keep-alive sessions and their opening, the percentiles, and the scrape of the service's own
Prometheus counters turned into what the server saw during a phase.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import aiohttp
import numpy as np

# -- request bodies ----------------------------------------------------------------------

class Bodies:
    """Pre-encoded JSON bodies with unique ticket ids, texts cycled from a list."""

    def __init__(self, texts: list[str], run_id: str) -> None:
        self.texts = [json.dumps(t).encode() for t in texts]  # JSON string literals
        self.run_id = run_id
        self._n = itertools.count()

    def _ticket(self, phase: str) -> bytes:
        i = next(self._n)
        tid = f"load-{self.run_id}-{phase}-{i}".encode()
        return b'{"id":"' + tid + b'","body":' + self.texts[i % len(self.texts)] + b"}"

    def single(self, phase: str, n: int) -> list[bytes]:
        return [b'{"ticket":' + self._ticket(phase) + b"}" for _ in range(n)]

    def batches(self, phase: str, n: int, size: int) -> list[bytes]:
        return [b'{"tickets":[' + b",".join(self._ticket(phase) for _ in range(size)) + b"]}"
                for _ in range(n)]


# -- measurement -------------------------------------------------------------------------

def pcts(ms: list[float]) -> dict[str, float | None]:
    if not ms:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(ms)
    return {"p50": round(float(np.percentile(a, 50)), 2),
            "p95": round(float(np.percentile(a, 95)), 2),
            "p99": round(float(np.percentile(a, 99)), 2),
            "max": round(float(a.max()), 2)}


class Tally:
    def __init__(self) -> None:
        self.ms: list[float] = []  # latencies of the 200 answers (errors are counted apart)
        self.n = 0  # requests sent (answered or not)
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.examples: dict[str, str] = {}  # the first message of each error kind
        self.replayed = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())


async def post(session: aiohttp.ClientSession, url: str, body: bytes,
                headers: dict[str, str], tally: Tally, since: float | None = None) -> None:
    """One request; latency from ``since`` (open loop: the scheduled time) or from the send."""
    t0 = time.perf_counter() if since is None else since
    tally.n += 1
    try:
        async with session.post(url, data=body, headers=headers) as r:
            payload = await r.read()
            status = r.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        kind = type(exc).__name__
        tally.error(kind)
        tally.examples.setdefault(kind, str(exc)[:200])
        return
    if status != 200:
        tally.error(f"http_{status}")
        return
    tally.ms.append((time.perf_counter() - t0) * 1000)
    tally.ok += 1
    if b'"replayed":true' in payload:
        tally.replayed += 1


def client_session(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=300,
                                     force_close=False, enable_cleanup_closed=False)
    return aiohttp.ClientSession(connector=connector, skip_auto_headers=["User-Agent"],
                                 timeout=aiohttp.ClientTimeout(total=30))


async def open_connections(sessions: list[aiohttp.ClientSession], base: str) -> None:
    """Open every client's keep-alive connection before the timing starts, all at once, as a
    client pool does. BentoML's workers race to accept them, and they often all land on one
    worker; evening them out is the service's job (serving.connection_balance), so the
    benchmark does not help it."""
    async def one(s: aiohttp.ClientSession) -> None:
        async with s.get(f"{base}/healthz") as resp:
            await resp.read()

    await asyncio.gather(*(one(s) for s in sessions))


async def scrape(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """The service's own counters (cca_*), flattened: name{labels} -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        async with session.get(f"{base}/metrics") as r:
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("cca_"):
            continue
        for s in family.samples:
            if s.name.endswith("_bucket"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def server_view(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What the service saw during a phase: mean micro-batch, in-service time, stage times."""
    d = {k: after[k] - before.get(k, 0.0) for k in after}

    def mean(prefix: str, scale: float = 1.0) -> float | None:
        s, c = d.get(f"{prefix}_sum{{}}"), d.get(f"{prefix}_count{{}}")
        return round(s / c * scale, 3) if s is not None and c else None

    view: dict[str, Any] = {"mean_cascade_batch": mean("cca_batch_size"),
                            "cascade_batches": int(d.get("cca_batch_size_count{}", 0))}
    for ep in ("/classify", "/batch_classify"):
        s = d.get(f"cca_http_request_duration_seconds_sum{{endpoint={ep}}}")
        c = d.get(f"cca_http_request_duration_seconds_count{{endpoint={ep}}}")
        if c:
            view[f"in_service_mean_ms{ep.replace('/', '_')}"] = round(s / c * 1000, 2)
    stages = {}
    for k, v in d.items():
        if k.startswith("cca_stage_duration_seconds_sum{stage="):
            stage = k.split("stage=", 1)[1].rstrip("}")
            c = d.get(f"cca_stage_duration_seconds_count{{stage={stage}}}")
            if c:
                stages[stage] = round(v / c * 1000, 3)
    view["stage_mean_ms_per_ticket"] = stages
    view["decisions_by_stage"] = {k.split("stage=", 1)[1].rstrip("}"): int(v)
                                  for k, v in d.items()
                                  if k.startswith("cca_decisions_total{stage=") and v}
    view["replays"] = int(d.get("cca_idempotent_replays_total{}", 0))
    return view


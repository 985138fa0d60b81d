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
import httptools
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


def worst_seconds(tally: Tally, t0: float, over_ms: float = 100.0) -> dict[str, Any]:
    """Latency second by second (by when each request was due), over the seconds with an
    answer (errors are counted apart): one stall of the server, or of the host, shows as a
    few bad seconds; a server short of CPU as many."""
    if not tally.ms:
        return {}
    sec = np.floor(np.asarray(tally.sent) - t0).astype(int)
    ms = np.asarray(tally.ms)
    p95 = {int(s): float(np.percentile(ms[sec == s], 95)) for s in np.unique(sec)}
    worst = max(p95, key=p95.get)
    return {"seconds": len(p95), "seconds_p95_over_ms": over_ms,
            "seconds_p95_over": sum(v > over_ms for v in p95.values()),
            "worst_second": worst, "worst_second_p95_ms": round(p95[worst], 2)}


class Tally:
    def __init__(self) -> None:
        self.ms: list[float] = []  # latencies of the 200 answers (errors are counted apart)
        self.sent: list[float] = []  # when each of those was due (perf_counter), same order
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


class Connection:
    """One keep-alive HTTP/1.1 connection: pre-encoded requests out, httptools parses answers.

    The generator shares the 2 cores with the server, so its CPU is taken from the server:
    aiohttp's client machinery (response objects, signals, timeouts) cost ~0.6 ms of CPU per
    request, this ~4x less (measured: the generator's cores in the report). A connection the
    server closes (``Connection: close``, as the service's connection balancing does) is
    reopened for the next request, as aiohttp's pool would.
    """

    def __init__(self, base: str, timeout_s: float = 30.0) -> None:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        self.host, self.port, self.timeout_s = host, int(port), timeout_s
        self._proto: _Answers | None = None
        self._heads: dict[tuple[str, str, tuple], bytes] = {}

    async def request(self, method: str, url: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        # The request line and headers are encoded once per (method, url, headers).
        key = (method, url, tuple((headers or {}).items()))
        head = self._heads.get(key)
        if head is None:
            path = "/" + url.split("/", 3)[3] if url.startswith("http") else url
            lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                     *(f"{k}: {v}" for k, v in (headers or {}).items())]
            head = self._heads[key] = ("\r\n".join(lines) + "\r\nContent-Length: ").encode()
        proto = self._proto
        if proto is None or proto.closed:
            loop = asyncio.get_running_loop()
            _, proto = await loop.create_connection(_Answers, self.host, self.port)
            self._proto = proto
        return await proto.send(head + str(len(body)).encode() + b"\r\n\r\n" + body,
                                self.timeout_s)

    async def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None


class _Answers(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    async def send(self, request: bytes, timeout_s: float) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        self.body = []
        assert self.transport is not None
        self.transport.write(request)
        timer = loop.call_later(timeout_s, self._fail, TimeoutError(f"no answer in {timeout_s} s"))
        try:
            return await waiter
        finally:
            timer.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), b"".join(self.body)))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("the server closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()


async def post(session: aiohttp.ClientSession | Connection, url: str, body: bytes,
               headers: dict[str, str], tally: Tally, since: float | None = None) -> None:
    """One request; latency from ``since`` (open loop: the scheduled time) or from the send."""
    t0 = time.perf_counter() if since is None else since
    tally.n += 1
    try:
        if isinstance(session, Connection):
            status, payload = await session.request("POST", url, body, headers)
        else:
            async with session.post(url, data=body, headers=headers) as r:
                payload = await r.read()
                status = r.status
    except (aiohttp.ClientError, OSError, TimeoutError, httptools.HttpParserError) as exc:
        kind = type(exc).__name__
        tally.error(kind)
        tally.examples.setdefault(kind, str(exc)[:200])
        return
    if status != 200:
        tally.error(f"http_{status}")
        return
    tally.ms.append((time.perf_counter() - t0) * 1000)
    tally.sent.append(t0)
    tally.ok += 1
    if b'"replayed":true' in payload:
        tally.replayed += 1


def client_session(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=300,
                                     force_close=False, enable_cleanup_closed=False)
    return aiohttp.ClientSession(connector=connector, skip_auto_headers=["User-Agent"],
                                 timeout=aiohttp.ClientTimeout(total=30))


async def open_connections(connections: list[Connection], base: str) -> None:
    """Open every client's keep-alive connection before the timing starts, all at once, as a
    client pool does. BentoML's workers race to accept them, and they often all land on one
    worker; evening them out is the service's job (serving.connection_balance), so the
    benchmark does not help it."""
    await asyncio.gather(*(c.request("GET", f"{base}/healthz") for c in connections))


async def scrape(base: str) -> dict[str, float]:
    """The service's own counters (cca_*), flattened: name{labels} -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        async with client_session(1) as session, session.get(f"{base}/metrics") as r:
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


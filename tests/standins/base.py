"""A threaded HTTP server with routes, a request log, scripted faults and an outage switch.

Real sockets on 127.0.0.1 (not an in-process transport), so clients exercise their whole
HTTP stack: connection errors, timeouts, headers, retries.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class Sleeps(list[float]):
    """A ``sleep`` for clients under test: records the waits instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode("utf-8")


Handler = Callable[[Request, re.Match[str]], Reply]


class StandIn:
    """Routes ``(METHOD, path regex)`` to handlers; records every request.

    ``fail_next(n, reply)`` answers the next ``n`` matching requests with ``reply`` (e.g. a
    429 with Retry-After) before the route runs; ``stop()``/``start()`` take the server off
    the network and back on the same port (a vendor outage: connections are refused);
    ``delay_after_apply`` holds a write's answer after it was applied (a crash window).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.requests: list[Request] = []
        self.violations: list[str] = []
        self.delay_after_apply = 0.0
        self._faults: list[tuple[str | None, int, Reply]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self.port = 0

    # -- configuration -------------------------------------------------------------------
    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append((method, re.compile(f"^{pattern}$"), handler))

    def fail_next(self, n: int, reply: Reply, path_pattern: str | None = None) -> None:
        with self._lock:
            self._faults.append((path_pattern, n, reply))

    def violation(self, text: str) -> None:
        with self._lock:
            self.violations.append(text)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> StandIn:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), name=f"standin-{self.name}",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        """Off the network: no new connections, and the open keep-alive ones are cut (a
        real outage does not keep serving clients that happened to be connected)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> StandIn:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving -------------------------------------------------------------------------
    def _fault_for(self, path: str) -> Reply | None:
        with self._lock:
            for i, (pattern, n, reply) in enumerate(self._faults):
                if pattern is None or re.search(pattern, path):
                    if n <= 1:
                        self._faults.pop(i)
                    else:
                        self._faults[i] = (pattern, n - 1, reply)
                    return reply
        return None

    def dispatch(self, req: Request) -> Reply:
        with self._lock:
            self.requests.append(req)
        fault = self._fault_for(req.path)
        if fault is not None:
            return fault
        for method, pattern, handler in self.routes:
            match = pattern.match(req.path)
            if match and method == req.method:
                return handler(req, match)
        self.violation(f"{req.method} {req.path}: no such endpoint")
        return Reply(404, {"error": "Not found"})

    def paused(self) -> None:
        """Called by write handlers after applying a write, before answering."""
        if self.delay_after_apply:
            time.sleep(self.delay_after_apply)


def _handler_for(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # http.server sends a reply's headers and body in two writes; with Nagle's algorithm
        # on, back-to-back requests on one connection each wait for a delayed ACK.
        disable_nagle_algorithm = True

        def setup(self) -> None:
            super().setup()
            with standin._lock:
                standin._connections.add(self.connection)

        def finish(self) -> None:
            with standin._lock:
                standin._connections.discard(self.connection)
            super().finish()

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            req = Request(self.command, parts.path, query,
                          {k.lower(): v for k, v in self.headers.items()}, body)
            reply = standin.dispatch(req)
            payload = reply.encoded()
            self.send_response(reply.status)
            headers = {"Content-Type": "application/json", **reply.headers}
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    return _Handler

"""A local stand-in for an OpenAI-compatible ``/v1/chat/completions`` endpoint, for tests.

It is not OpenAI's code: its responses are shaped after OpenAI's public API reference (a
``chat.completion`` object with ``id``, ``object``, ``created``, ``model``, ``choices[0].message
.content``, ``finish_reason`` and ``usage.prompt_tokens / completion_tokens / total_tokens``;
errors as ``{"error": {"message", "type", "param", "code"}}``). It runs on 127.0.0.1 on a free
port in a background thread, records every request body it receives, and its behaviour is
switched per test through ``mode``, ``reply``, ``prose``, ``delay_s`` and ``retry_after``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Mode = Literal["json", "prose", "rate_limit", "error", "reject_response_format",
               "fail_then_json"]


class FakeOpenAI:
    """modes: json (content = ``reply`` as JSON), prose (content = ``prose``), rate_limit (429,
    Retry-After = ``retry_after`` when set), error (500), reject_response_format (400 when the
    request has a response_format, else like json), fail_then_json (``fail_status`` for the
    next ``failures_left`` requests, then like json). ``delay_s`` sleeps before any answer."""

    def __init__(self) -> None:
        self.mode: Mode = "json"
        self.reply: dict[str, Any] = {"label": "billing_question", "confidence": 0.9,
                                      "explanation": "asks about a charge"}
        self.prose = "I think this ticket is about billing, probably."
        self.delay_s = 0.0
        self.retry_after: str | None = None
        self.fail_status, self.failures_left = 429, 0
        self.prompt_tokens, self.completion_tokens = 120, 30
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True,
                                        name="fake-openai")

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def hits(self) -> int:
        with self._lock:
            return len(self.requests)

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _respond(self, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.mode == "rate_limit":
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return 429, headers, _error("Rate limit reached", "rate_limit_exceeded")
        if self.mode == "error":
            return 500, {}, _error("The server had an error", "server_error")
        if self.mode == "reject_response_format" and "response_format" in body:
            kind = body["response_format"].get("type")
            return 400, {}, _error(f"'response_format' of type '{kind}' is not supported "
                                   "with this model.", "invalid_request_error")
        if self.mode == "fail_then_json" and self.failures_left > 0:
            self.failures_left -= 1
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            status = self.fail_status
            return status, headers, _error("try again", "rate_limit_exceeded"
                                           if status == 429 else "server_error")
        content = self.prose if self.mode == "prose" else json.dumps(self.reply)
        return 200, {}, {
            "id": f"chatcmpl-fake{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": self.prompt_tokens,
                      "completion_tokens": self.completion_tokens,
                      "total_tokens": self.prompt_tokens + self.completion_tokens},
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else delayed ACKs add ~40 ms per answer

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    fake.requests.append(body)
                    fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                    fake.paths.append(self.path)
                # OpenAI's path, or Azure OpenAI's /openai/deployments/{name}/chat/completions
                if not self.path.split("?")[0].rstrip("/").endswith(("/v1/chat/completions",
                                                                     "/chat/completions")):
                    status, headers, payload = 404, {}, _error("Unknown path", "not_found")
                else:
                    status, headers, payload = fake._respond(body)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): expected in the slow tests

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


def closed_port_url() -> str:
    """A base URL where nothing listens (connection refused): the endpoint is down."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"

"""What every request passes before a handler: a size cap, a correlation id, its metrics,
and errors turned into one JSON shape (``{"error": ..., "request_id": ...}``), never a 5xx for
a caller's mistake.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.logs import correlation_id, request_id
from serving.metrics import ServiceMetrics

log = logging.getLogger("cca.serving.http")


class ServiceError(Exception):
    """An answer other than 2xx that the handler chose, with a message for the caller."""

    def __init__(self, status_code: int, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code, self.message, self.headers = status_code, message, headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None,
                   detail: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "request_id": request_id.get()}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers)


class _TooLarge(Exception):
    pass


class GuardMiddleware:
    """Pure ASGI (no per-request task switch): refuses bodies over ``max_body`` bytes before
    they are read whole, sets X-Request-ID, counts and times every request."""

    def __init__(self, app: ASGIApp, max_body: int, metrics: ServiceMetrics) -> None:
        self.app, self.max_body, self.metrics = app, max_body, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        rid = correlation_id(headers.get("x-request-id"))
        token = request_id.set(rid)
        route = scope.get("path", "")
        endpoint = route if route in _ENDPOINTS else ("/customers" if
                                                       route.startswith("/customers/") else
                                                       "other")
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            declared = headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
                await _send_json(send_wrapped, 413, f"request body over {self.max_body} bytes")
                return
            seen = 0

            async def receive_capped() -> Message:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > self.max_body:
                        raise _TooLarge
                return message

            try:
                await self.app(scope, receive_capped, send_wrapped)
            except _TooLarge:
                await _send_json(send_wrapped, 413, f"request body over {self.max_body} bytes")
        finally:
            seconds = time.perf_counter() - t0
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()
            self.metrics.request_seconds.labels(endpoint).observe(seconds)
            # The access log: one JSON line per request, ids and numbers only.
            log.log(logging.ERROR if status["code"] >= 500 else logging.INFO, "request",
                    extra={"endpoint": endpoint, "status": status["code"],
                           "ms": round(seconds * 1000, 2)})
            request_id.reset(token)


_ENDPOINTS = {"/classify", "/batch_classify", "/explain", "/feedback", "/status",
              "/openapi.json"}


async def _send_json(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message, "request_id": request_id.get()}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status_code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            message = "request body is not valid JSON"
        else:
            message = f"{_field(tuple(first.get('loc', ())))}: {first.get('msg', 'invalid')}"
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
                  for e in errors[:20]]
        return error_response(422, message, detail=detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 400 and "parsing the body" in message:
            message = "request body is not valid JSON (or not UTF-8)"
        return error_response(exc.status_code, message, dict(exc.headers or {}))

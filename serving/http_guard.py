"""What every request passes before a handler: a size cap, a correlation id, its metrics,
and errors turned into one JSON shape (``{"error": ..., "request_id": ...}``), never a 5xx for
a caller's mistake.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cca.strict_json import NotJSON, finite_float
from serving.connection_balance import ConnectionBalancer
from serving.logs import correlation_id, request_id
from serving.metrics import ServiceMetrics

log = logging.getLogger("cca.serving.http")


class ServiceError(Exception):
    """An answer other than 2xx that the handler chose, with a message for the caller."""

    def __init__(self, status_code: int, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code, self.message, self.headers = status_code, message, headers or {}


def _json_bytes(payload: dict[str, Any]) -> bytes:
    """JSON with <, > and & escaped (same meaning): a caller's text echoed in an error can
    never become markup in a browser or log viewer."""
    text = json.dumps(payload, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


class SafeJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _json_bytes(content)


def error_response(status: int, message: str, headers: dict[str, str] | None = None,
                   detail: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "request_id": request_id.get()}
    if detail is not None:
        body["detail"] = detail
    return SafeJSONResponse(body, status_code=status, headers=headers)


def _not_json_constant(name: str) -> Any:
    raise StarletteHTTPException(400, f"{name} is not a JSON value (RFC 8259): send a number "
                                      "or null")


class StrictJSONRequest(Request):
    """A request whose JSON refuses NaN and Infinity (Python's parser takes them, and
    PostgreSQL's jsonb would store them as null); other malformed JSON raises as before."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = json.loads(await self.body(), parse_constant=_not_json_constant,
                                        parse_float=finite_float)
            except NotJSON as exc:
                raise StarletteHTTPException(400, str(exc)) from None
            except RecursionError:
                raise StarletteHTTPException(
                    400, "request body JSON is nested too deeply") from None
        return self._json


class StrictJSONRoute(APIRoute):
    """Every route parses JSON bodies with ``StrictJSONRequest``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict


def too_large(limit: int) -> StarletteHTTPException:
    return StarletteHTTPException(413, f"request body over {limit} bytes")


_JSON_POSTS = {"/classify", "/batch_classify", "/explain", "/feedback", "/customers/erase"}
_ENDPOINTS = _JSON_POSTS | {"/status", "/openapi.json", "/healthz", "/livez", "/readyz",
                            "/metrics"}


class GuardMiddleware:
    """Pure ASGI around the whole BentoML app: refuses bodies over ``max_body`` bytes before
    they are read whole and non-JSON bodies on the JSON endpoints, sets X-Request-ID, turns
    the router's plain-text 404/405 into the JSON error shape, counts and times requests, and
    lets ``balancer`` close connections to even out the workers' shares."""

    def __init__(self, app: ASGIApp, max_body: int, metrics: ServiceMetrics,
                 balancer: ConnectionBalancer | None = None) -> None:
        self.app, self.max_body, self.metrics = app, max_body, metrics
        self.balancer = balancer or ConnectionBalancer(max_requests=0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        rid = correlation_id(headers.get("x-request-id"))
        token = request_id.set(rid)
        path = scope.get("path", "")
        endpoint = path if path in _ENDPOINTS else (
            "/webhooks" if path.startswith("/webhooks/") else "other")
        t0 = time.perf_counter()
        response = _Response(scope, send, rid, self.balancer)
        self.balancer.enter()
        try:
            await self._guarded(scope, receive, headers, response)
        finally:
            self.balancer.leave()
            seconds = time.perf_counter() - t0
            self.metrics.requests.labels(endpoint, str(response.code)).inc()
            self.metrics.request_seconds.labels(endpoint).observe(seconds)
            # The access log: one JSON line per request, ids and numbers only.
            log.log(logging.ERROR if response.code >= 500 else logging.INFO, "request",
                    extra={"endpoint": endpoint, "status": response.code,
                           "ms": round(seconds * 1000, 2)})
            request_id.reset(token)

    async def _guarded(self, scope: Scope, receive: Receive, headers: dict[str, str],
                       response: _Response) -> None:
        """The app behind the checks that need no body: a declared size over the cap, a
        JSON endpoint without JSON; the body's real size is counted as it is read."""
        path, method = scope.get("path", ""), scope.get("method", "GET")
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            await _send_json(response.send, 413, f"request body over {self.max_body} bytes")
            return
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if method == "POST" and path in _JSON_POSTS and ctype != "application/json":
            await _send_json(response.send, 415, "Content-Type must be application/json"
                             f" (got {ctype or 'none'})")
            return
        try:
            await self.app(scope, _capped(receive, self.max_body), response.send)
        except StarletteHTTPException as exc:  # raised outside the FastAPI app
            if response.started:
                raise
            await _send_json(response.send, exc.status_code, str(exc.detail))


def _capped(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises 413 once the body read so far is over ``limit`` bytes."""
    seen = 0

    async def receive_capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large(limit)
        return message

    return receive_capped


class _Response:
    """One request's answer on its way out: its status (for the metrics and the access log),
    the X-Request-ID and nosniff headers, the balancer's ``Connection: close``, and the
    outer router's plain-text 404/405 replaced by the JSON error shape."""

    def __init__(self, scope: Scope, send: Send, rid: str,
                 balancer: ConnectionBalancer) -> None:
        self._scope, self._send, self._rid, self._balancer = scope, send, rid, balancer
        self.code, self.started, self._swallow = 500, False, False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            status = message["status"]
            raw = dict(message.get("headers", []))
            plain = raw.get(b"content-type", b"").startswith(b"text/plain")
            if status in (404, 405) and plain:  # the outer router's own answer
                await self._router_error(status, raw.get(b"allow", b"").decode("latin-1"))
                return
            self.code = status
            message["headers"] = [*message.get("headers", []),
                                  (b"x-request-id", self._rid.encode()),
                                  (b"x-content-type-options", b"nosniff")]
            if self._balancer.close_after(self._scope):
                message["headers"].append((b"connection", b"close"))
        elif self._swallow:
            return
        await self._send(message)

    async def _router_error(self, status: int, allow: str) -> None:
        """The JSON error instead of the router's text; its own body is swallowed."""
        self._swallow = True
        method, path = self._scope.get("method", "GET"), self._scope.get("path", "")
        text = (f"no endpoint {method} {path}" if status == 404 else
                f"method {method} not allowed on {path}"
                + (f" (allowed: {allow})" if allow else ""))
        self.code = status
        extra = {b"x-request-id": self._rid.encode(), b"x-content-type-options": b"nosniff"}
        if allow:
            extra[b"allow"] = allow.encode()
        await _send_json(self._send, status, text, extra)  # not self.send: swallowing


async def _send_json(send: Send, status: int, message: str,
                     extra: dict[bytes, bytes] | None = None) -> None:
    body = _json_bytes({"error": message, "request_id": request_id.get()})
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *(extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _field(loc: tuple[Any, ...]) -> str:
    """``("body", "ticket", "body")`` → ``ticket.body``: only the leading "body" (where
    FastAPI found the value) goes, not a field that happens to be called body."""
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "request body"


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

"""Keep-alive connections are closed after N requests, so workers' shares even out."""

from __future__ import annotations

import asyncio

import pytest

from serving.http_guard import GuardMiddleware
from serving.metrics import ServiceMetrics


async def _ok(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


def _connection_headers(guard: GuardMiddleware, client: tuple[str, int],
                        path: str = "/classify") -> list[bytes]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [],
             "client": client}
    asyncio.run(guard(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return [v for k, v in start["headers"] if k == b"connection"]


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics()


def test_every_nth_response_on_a_connection_closes_it(metrics: ServiceMetrics) -> None:
    guard = GuardMiddleware(_ok, max_body=1000, metrics=metrics, max_requests_per_connection=3)
    a, b = ("10.0.0.1", 5000), ("10.0.0.1", 5001)
    seen = [_connection_headers(guard, a) for _ in range(3)]
    assert seen == [[], [], [b"close"]]
    assert _connection_headers(guard, b) == []  # counted per connection
    # The client's next connection from the same port starts a new count.
    assert [_connection_headers(guard, a) for _ in range(3)] == [[], [], [b"close"]]


def test_a_batch_answer_closes_its_connection(metrics: ServiceMetrics) -> None:
    guard = GuardMiddleware(_ok, max_body=1000, metrics=metrics, max_requests_per_connection=3)
    client = ("10.0.0.3", 7000)
    assert _connection_headers(guard, client) == []
    assert _connection_headers(guard, client, "/batch_classify") == [b"close"]
    assert _connection_headers(guard, client) == []  # a new connection, a new count


def test_zero_never_closes(metrics: ServiceMetrics) -> None:
    guard = GuardMiddleware(_ok, max_body=1000, metrics=metrics, max_requests_per_connection=0)
    assert all(_connection_headers(guard, ("10.0.0.2", 6000), path) == []
               for _ in range(50) for path in ("/classify", "/batch_classify"))

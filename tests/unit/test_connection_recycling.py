"""Keep-alive connections are closed after N requests, after a batch, and by a worker busier
than the others, so the workers' shares of connections even out."""

from __future__ import annotations

import asyncio
import os

import bentoml
import pytest

from serving.connection_balance import (
    ConnectionBalancer,
    LoadBoard,
    overloaded,
    remove_stale_boards,
)
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
    guard = GuardMiddleware(_ok, max_body=1000, metrics=metrics,
                            balancer=ConnectionBalancer(3))
    a, b = ("10.0.0.1", 5000), ("10.0.0.1", 5001)
    seen = [_connection_headers(guard, a) for _ in range(3)]
    assert seen == [[], [], [b"close"]]
    assert _connection_headers(guard, b) == []  # counted per connection
    # The client's next connection from the same port starts a new count.
    assert [_connection_headers(guard, a) for _ in range(3)] == [[], [], [b"close"]]


def test_a_batch_answer_closes_its_connection(metrics: ServiceMetrics) -> None:
    guard = GuardMiddleware(_ok, max_body=1000, metrics=metrics,
                            balancer=ConnectionBalancer(3))
    client = ("10.0.0.3", 7000)
    assert _connection_headers(guard, client) == []
    assert _connection_headers(guard, client, "/batch_classify") == [b"close"]
    assert _connection_headers(guard, client) == []  # a new connection, a new count


def test_zero_never_closes(metrics: ServiceMetrics) -> None:
    guard = GuardMiddleware(_ok, max_body=1000, metrics=metrics,
                            balancer=ConnectionBalancer(0))
    assert all(_connection_headers(guard, ("10.0.0.2", 6000), path) == []
               for _ in range(50) for path in ("/classify", "/batch_classify"))


def test_overloaded_only_when_clearly_busier_than_the_others() -> None:
    assert overloaded(14, [6]) and overloaded(20, [0]) and overloaded(4, [0])
    assert not overloaded(10, [10]) and not overloaded(12, [8])
    assert not overloaded(3, [0])  # too few in flight to be worth a reconnect
    assert not overloaded(50, [])  # a single worker has no one to shed to
    assert overloaded(9, [2, 4]) and not overloaded(9, [6, 6])


def test_workers_see_each_others_in_flight_counts(tmp_path) -> None:
    one, two = (LoadBoard(tmp_path / "load.bin", w, 2) for w in (1, 2))
    for _ in range(3):
        one.enter()
    two.enter()
    assert (one.others(), two.others()) == ([1], [3])
    one.leave()
    two.leave()
    two.leave()  # never below zero
    assert (one.others(), two.others(), two.in_flight) == ([0], [2], 0)
    with pytest.raises(ValueError, match="worker 3"):
        LoadBoard(tmp_path / "load.bin", 3, 2)


def test_a_worker_busier_than_the_other_sheds_connections(tmp_path, metrics: ServiceMetrics,
                                                          monkeypatch) -> None:
    monkeypatch.setattr(bentoml.server_context, "worker_index", 1)
    balancer = ConnectionBalancer(100, tmp_path, workers=2)
    guard = GuardMiddleware(_ok, max_body=1000, metrics=metrics, balancer=balancer)
    board = balancer.board()
    assert board is not None
    other = LoadBoard(tmp_path / f"load-{os.getppid()}.bin", 2, 2)
    client = ("10.0.0.4", 8000)
    for _ in range(5):  # this worker: 5 other requests in flight besides the one answered
        board.enter()
    # Both busy alike: no reason to move.
    for _ in range(6):
        other.enter()
    assert [_connection_headers(guard, client) for _ in range(4)] == [[]] * 4
    # The other worker goes idle: a connection that has served min_served requests moves.
    for _ in range(6):
        other.leave()
    assert _connection_headers(guard, ("10.0.0.4", 8001)) == []  # a new one stays at first
    assert _connection_headers(guard, ("10.0.0.4", 8001)) == []
    assert _connection_headers(guard, ("10.0.0.4", 8001)) == [b"close"]
    assert _connection_headers(guard, client) == [b"close"]
    # The request's own count is taken back when it is answered.
    assert board.in_flight == 5


def test_without_a_worker_index_only_the_request_count_applies(tmp_path) -> None:
    balancer = ConnectionBalancer(100, tmp_path, workers=2)  # the app run in-process
    assert balancer.board() is None
    assert not any(balancer.close_after({"path": "/classify", "client": ("h", 1)})
                   for _ in range(99))


def test_boards_of_services_that_are_gone_are_removed(tmp_path) -> None:
    # 999999999 is above Linux's largest pid (pid_max <= 2**22): never a live process.
    mine, stale = tmp_path / f"load-{os.getpid()}.bin", tmp_path / "load-999999999.bin"
    for path in (mine, stale):
        path.write_bytes(b"\0" * 8)
    assert remove_stale_boards(tmp_path) == [stale]
    assert mine.exists() and not stale.exists()


def test_a_board_that_cannot_be_opened_turns_balancing_off(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(bentoml.server_context, "worker_index", 1)
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    balancer = ConnectionBalancer(100, blocked / "serve", workers=2)
    assert balancer.board() is None  # logged, not raised: requests are still served
    balancer.enter()
    assert not balancer.close_after({"path": "/classify", "client": ("h", 1)})
    balancer.leave()

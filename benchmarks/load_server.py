"""Start and stop `cca serve` for benchmarks/serve_load.py, and mint its bearer token.

The benchmark runs the service as its own process tree on a free port, with the per-client
rate limit lifted (the benchmark is one client) and progress output off; this module holds
that command line and environment, the wait for /readyz, a shutdown that kills only the
processes this benchmark started, and `cca token`, so the phases need not know how the
server is launched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from load_machine import ProcTree

PROJECT_ROOT = Path(__file__).resolve().parent.parent


SERVER_ENV = {"CCA_RATE_LIMIT_PER_S": "100000", "CCA_RATE_LIMIT_BURST": "100000",
              "CCA_NO_PROGRESS": "1"}


# -- the server --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cca_cmd() -> list[str]:
    script = Path(sys.executable).with_name("cca")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from cli.main import run; run()"]


class Server:
    def __init__(self, home: Path, port: int, workers: int | None, log_path: Path) -> None:
        self.home, self.port, self.log_path = home, port, log_path
        self.env = {**os.environ, **SERVER_ENV, "CCA_HOME": str(home)}
        cmd = [*_cca_cmd(), "serve", "--port", str(port)]
        if workers:
            cmd += ["--workers", str(workers)]
        self.cmd = cmd
        self.proc: subprocess.Popen | None = None
        self.tree: ProcTree | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.cmd, cwd=PROJECT_ROOT, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.tree = ProcTree(self.proc.pid)

    async def wait_ready(self, timeout_s: float = 180) -> float:
        t0 = time.perf_counter()
        url = f"http://127.0.0.1:{self.port}/readyz"
        async with aiohttp.ClientSession() as session:
            while time.perf_counter() - t0 < timeout_s:
                if self.proc is not None and self.proc.poll() is not None:
                    raise SystemExit(f"cca serve exited with {self.proc.returncode}; "
                                     f"see {self.log_path}")
                try:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            return time.perf_counter() - t0
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.25)
        raise SystemExit(f"cca serve not ready after {timeout_s:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pids = self.tree.pids() if self.tree else []
        self.proc.send_signal(signal.SIGTERM)  # cca serve stops bentoml, then its database
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            for pid in reversed(pids):  # only the processes this benchmark started
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()


def mint_token(home: Path, *scopes: str) -> str:
    """`cca token --scope ...` (default classify): the token is the last line of stdout."""
    flags = [x for scope in (scopes or ("classify",)) for x in ("--scope", scope)]
    out = subprocess.run([*_cca_cmd(), "token", *flags, "--subject",
                          "serve-load-benchmark"], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, env={**os.environ, "CCA_HOME": str(home)}, check=True)
    return out.stdout.strip().splitlines()[-1]

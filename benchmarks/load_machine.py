"""Machine and process facts for benchmarks/serve_load.py, and the CPU accounting of a phase.

A load test on a shared machine is only readable next to what else the machine was doing, so
this module gathers what the report says about the host (CPU model, memory, git state, load
average, CPU pressure), the RSS and CPU seconds of a process tree (psutil, else /proc), and
`Usage`, which splits a phase's CPU between the load generator, the server, PostgreSQL/Redis
and unrelated load. It is kept apart from the phases so the measuring can be read on its own.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent


try:
    import psutil
except ImportError:  # fall back to /proc
    psutil = None

if TYPE_CHECKING:
    from load_server import Server


# -- machine and process facts -----------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def git() -> dict[str, Any]:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=PROJECT_ROOT, capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": run("rev-parse", "HEAD") or None,
            "dirty_files": len(run("status", "--porcelain").splitlines())}


_TICK = os.sysconf("SC_CLK_TCK")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def steal_s() -> float:
    """CPU seconds the hypervisor gave other guests while this one wanted them (/proc/stat
    "steal"): a host that slows down shows here, not in any process of this machine."""
    try:
        return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[8]) / _TICK
    except (OSError, ValueError, IndexError):
        return float("nan")


def machine_busy_s() -> float:
    """CPU seconds used since boot (/proc/stat: all but idle and iowait), the hypervisor's
    steal included: ``Usage`` takes steal out again for the unrelated load."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICK


def _cpu_pressure() -> float | None:
    """Share of the last 10 s in which some runnable task waited for a CPU (PSI), percent."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(line.split()[1].split("=")[1])
    except (OSError, ValueError, IndexError):
        return None


def self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


_PROC_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, IndexError) + (
    (psutil.Error,) if psutil is not None else ())
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _proc_children(pid: int) -> list[int]:
    """Descendants of ``pid`` from /proc (when psutil is missing)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class ProcTree:
    """A process and all its descendants: RSS and CPU seconds (psutil, else /proc)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pids(self) -> list[int]:
        if psutil is not None:
            try:
                root = psutil.Process(self.pid)
                return [self.pid, *(c.pid for c in root.children(recursive=True))]
            except psutil.Error:
                return []
        return [self.pid, *_proc_children(self.pid)] if Path(f"/proc/{self.pid}").exists() else []

    def sample(self) -> dict[str, Any]:
        """RSS (MB) summed and per process, CPU seconds summed over the live processes."""
        rss, cpu, per = 0, 0.0, {}
        for pid in self.pids():
            try:
                if psutil is not None:
                    p = psutil.Process(pid)
                    with p.oneshot():
                        r, t, name = p.memory_info().rss, p.cpu_times(), p.name()
                    c = t.user + t.system
                else:
                    r = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    c = (int(fields[11]) + int(fields[12])) / _TICK
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
            except _PROC_ERRORS:
                continue
            rss += r
            cpu += c
            per[f"{name}:{pid}"] = round(r / 2**20, 1)
        return {"rss_mb": round(rss / 2**20, 1), "cpu_s": cpu, "processes": per}


def other_trees(settings) -> dict[str, ProcTree]:
    """The embedded PostgreSQL (audit, vector cache) and Redis, for their CPU share."""
    trees: dict[str, ProcTree] = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        trees["postgres"] = ProcTree(int((settings.pgdata / "postmaster.pid").read_text()
                                         .split()[0]))
    if psutil is not None:
        for p in psutil.process_iter(["name"]):
            if p.info["name"] == "redis-server":
                trees["redis"] = ProcTree(p.pid)
                break
    return trees


# -- CPU and wall time over a phase -------------------------------------------------------

def _cpu_probe_ms() -> float:
    """CPU ms of a fixed pure-Python loop, taken between phases (the server idle). It took
    51-105 ms within single runs on this shared 2-core machine (a 3x longer loop: 411-732 ms
    a minute apart): the host's speed varies, so a phase is read next to its probes."""
    t0, total = time.process_time(), 0
    for i in range(1_000_000):
        total += i * i
    return round((time.process_time() - t0) * 1000, 1)


class Usage:
    """Wall time, this process's CPU and the server tree's CPU over a phase."""

    def __init__(self, server: Server, others: dict[str, ProcTree], units: int = 0) -> None:
        self.server, self.others, self.units = server, others, units

    def __enter__(self) -> Usage:
        self.probe_start = _cpu_probe_ms()
        self.load_start, self.psi_start = loadavg(), _cpu_pressure()
        self.t0, self.cpu0, self.busy0 = time.perf_counter(), self_cpu_s(), machine_busy_s()
        self.steal0 = steal_s()
        self.srv0 = self.server.tree.sample()["cpu_s"]
        self.oth0 = {k: t.sample()["cpu_s"] for k, t in self.others.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.gen_cpu = self_cpu_s() - self.cpu0
        self.srv_cpu = self.server.tree.sample()["cpu_s"] - self.srv0
        self.oth_cpu = {k: t.sample()["cpu_s"] - self.oth0[k] for k, t in self.others.items()}
        self.busy = machine_busy_s() - self.busy0
        self.steal = steal_s() - self.steal0
        if self.steal != self.steal:  # NaN: no /proc/stat steal field here
            self.steal = 0.0
        self.load_end, self.psi_end = loadavg(), _cpu_pressure()
        self.probe_end = _cpu_probe_ms()

    def report(self) -> dict[str, Any]:
        cores = os.cpu_count() or 1
        out = {"wall_s": round(self.wall, 2),
               "generator_cpu_cores": round(self.gen_cpu / self.wall, 3),
               "generator_cpu_share_of_machine": round(self.gen_cpu / self.wall / cores, 3),
               "server_cpu_cores": round(self.srv_cpu / self.wall, 3)}
        if self.units:
            out["server_cpu_ms_per_unit"] = round(self.srv_cpu / self.units * 1000, 2)
        for k, v in self.oth_cpu.items():
            out[f"{k}_cpu_cores"] = round(v / self.wall, 3)
        # Everything else on the machine (other sessions' tests, ...): > 0.2 cores disturbs.
        mine = self.gen_cpu + self.srv_cpu + sum(self.oth_cpu.values())
        out["machine_busy_cores"] = round(self.busy / self.wall, 3)
        out["unrelated_cpu_cores"] = round(max(0.0, self.busy - self.steal - mine) / self.wall, 3)
        out["steal_cores"] = round(self.steal / self.wall, 3)
        out["loadavg_start"], out["loadavg_end"] = self.load_start, self.load_end
        out["cpu_pressure_some_avg10_start"] = self.psi_start
        out["cpu_pressure_some_avg10_end"] = self.psi_end
        out["cpu_probe_ms_before_after"] = [self.probe_start, self.probe_end]
        return out

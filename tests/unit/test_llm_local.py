"""Joining and verifying the local LLM's GGUF from chunk files, and the server's start-up
failures, with tiny fake chunks and fake servers (no llama.cpp, no real model)."""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cascade import llm_local
from cascade.llm_local import LocalLLMServer, model_file, model_path
from cca.errors import StateError
from cca.settings import Settings
from cli.main import app
from tests.servers import free_port

CHUNKS = [b"GGUF" + os.urandom(3000), os.urandom(5000), os.urandom(17)]
WHOLE = b"".join(CHUNKS)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def fake_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Three small chunk files pinned by their real digest; returns a call counter."""
    paths = []
    for i, data in enumerate(CHUNKS, 1):
        paths.append(tmp_path / f"part{i:02d}.bin")
        paths[-1].write_bytes(data)
    calls = [0]

    def chunk_paths() -> list[Path]:
        calls[0] += 1
        return paths

    monkeypatch.setattr(llm_local, "chunk_paths", chunk_paths)
    monkeypatch.setattr(llm_local, "MODEL_SIZE", len(WHOLE))
    monkeypatch.setattr(llm_local, "MODEL_SHA256", hashlib.sha256(WHOLE).hexdigest())
    monkeypatch.setattr(llm_local, "_BUFFER", 1024)  # several reads per chunk
    monkeypatch.setattr(llm_local, "_verified", set())
    return calls


def test_right_digest_joins_once_and_reuses(settings: Settings, fake_chunks: list[int]) -> None:
    seen: list[int] = []
    path = model_file(settings, progress=seen.append)
    assert path == model_path(settings)
    assert path.read_bytes() == WHOLE
    assert sum(seen) == len(WHOLE) and len(seen) > 3
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    stat = path.stat()

    assert model_file(settings) == path
    assert fake_chunks == [1]  # reused, not joined again
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)


def test_stale_temp_files_are_removed(settings: Settings, fake_chunks: list[int]) -> None:
    folder = model_path(settings).parent
    folder.mkdir(parents=True)
    stale, fresh = (folder / f".{llm_local.MODEL_FILENAME}.{n}.part" for n in ("old", "new"))
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (0, 0))
    model_file(settings)
    assert sorted(p.name for p in folder.iterdir()) == [fresh.name, llm_local.MODEL_FILENAME]


def test_new_process_rehashes_once_without_rejoining(settings: Settings,
                                                     fake_chunks: list[int]) -> None:
    path = model_file(settings)
    llm_local._verified.clear()  # as in a fresh process
    seen: list[int] = []
    assert model_file(settings, progress=seen.append) == path
    assert sum(seen) == len(WHOLE) and fake_chunks == [1]
    seen.clear()
    assert model_file(settings, progress=seen.append) == path
    assert seen == []  # verified once per process


def test_damaged_file_of_right_size_is_joined_again(settings: Settings,
                                                    fake_chunks: list[int]) -> None:
    path = model_file(settings)
    path.write_bytes(b"X" * len(WHOLE))
    llm_local._verified.clear()
    assert model_file(settings).read_bytes() == WHOLE
    assert fake_chunks == [2]


def test_file_of_wrong_size_is_joined_again(settings: Settings,
                                            fake_chunks: list[int]) -> None:
    path = model_file(settings)
    path.write_bytes(WHOLE[:-1])
    assert model_file(settings).read_bytes() == WHOLE
    assert fake_chunks == [2]


def test_wrong_digest_fails_and_leaves_nothing(settings: Settings, fake_chunks: list[int],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm_local, "MODEL_SHA256", "0" * 64)
    with pytest.raises(StateError) as err:
        model_file(settings)
    message = str(err.value)
    assert "0" * 64 in message and hashlib.sha256(WHOLE).hexdigest() in message
    assert list(model_path(settings).parent.iterdir()) == []


def test_wrong_size_fails(settings: Settings, fake_chunks: list[int],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm_local, "MODEL_SIZE", len(WHOLE) + 1)
    with pytest.raises(StateError, match=f"expected {len(WHOLE) + 1} bytes.*got {len(WHOLE)}"):
        model_file(settings)
    assert list(model_path(settings).parent.iterdir()) == []


def _chunk_package(root: Path, name: str, data_file: Path) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text(textwrap.dedent(f"""\
        def get_part_path():
            return {str(data_file)!r}
        """))


def test_missing_chunk_package_names_the_fix(settings: Settings, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.bin").write_bytes(b"GGUF")
    _chunk_package(tmp_path, "cca_fake_chunk_a", tmp_path / "a.bin")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(llm_local, "CHUNK_MODULES", ("cca_fake_chunk_a", "cca_fake_chunk_b"))
    with pytest.raises(StateError, match=r"cca_fake_chunk_b is not installed.*uv sync --extra "
                                         r"llm.*make setup"):
        model_file(settings)
    assert not model_path(settings).exists()


def test_chunk_package_without_its_file(settings: Settings, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _chunk_package(tmp_path, "cca_fake_chunk_c", tmp_path / "gone.bin")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(llm_local, "CHUNK_MODULES", ("cca_fake_chunk_c",))
    with pytest.raises(StateError, match=r"gone\.bin"):
        llm_local.chunk_paths()


def test_chunk_paths_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("cca_fake_chunk_d", "cca_fake_chunk_e"):
        (tmp_path / f"{name}.bin").write_bytes(b"x")
        _chunk_package(tmp_path, name, tmp_path / f"{name}.bin")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(llm_local, "CHUNK_MODULES", ("cca_fake_chunk_e", "cca_fake_chunk_d"))
    assert [p.stem for p in llm_local.chunk_paths()] == ["cca_fake_chunk_e", "cca_fake_chunk_d"]


# --- the server process ------------------------------------------------------------------


def _fake_server(monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    """The server's command replaced by a Python one-liner."""
    monkeypatch.setattr(llm_local, "_require_llama_cpp", lambda: None)
    monkeypatch.setattr(LocalLLMServer, "command",
                        lambda self, model: [sys.executable, "-c", code])


def test_command_flags_and_url(settings: Settings) -> None:
    server = LocalLLMServer(settings, port=9123, threads=3, ctx=2048)
    cmd = server.command(Path("/m.gguf"))
    assert cmd[:3] == [sys.executable, "-m", "llama_cpp.server"]
    flags = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    assert flags["--model"] == "/m.gguf" and flags["--port"] == "9123"
    assert flags["--n_threads"] == flags["--n_threads_batch"] == "3"
    assert flags["--n_ctx"] == "2048" and flags["--host"] == "127.0.0.1"
    assert server.base_url == "http://127.0.0.1:9123/v1"
    defaults = LocalLLMServer(settings)
    assert (defaults.port, defaults.ctx) == (8088, 4096) and defaults.threads >= 1


def test_refuses_a_port_in_use(settings: Settings, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        server = LocalLLMServer(settings, port=s.getsockname()[1])
        with pytest.raises(StateError, match="already in use"):
            server.start(tmp_path / "m.gguf")
    assert server.process is None


def test_server_that_dies_reports_its_log(settings: Settings, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_server(monkeypatch, "import sys; print('cannot load model: bad magic'); sys.exit(4)")
    server = LocalLLMServer(settings, port=free_port())
    with pytest.raises(StateError, match=r"(?s)exited with code 4.*bad magic"):
        server.start(tmp_path / "m.gguf")
    assert server.process is None


def test_server_that_never_answers_times_out_and_is_stopped(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pid_file = tmp_path / "pid"
    _fake_server(monkeypatch, f"import os, time; open({str(pid_file)!r}, 'w')"
                              ".write(str(os.getpid())); print('loading', flush=True); "
                              "time.sleep(60)")
    server = LocalLLMServer(settings, port=free_port(), startup_timeout_s=1.5)
    with pytest.raises(StateError, match=r"(?s)did not answer.*loading"):
        server.start(tmp_path / "m.gguf")
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # terminated and reaped
        os.kill(pid, 0)


def test_cli_help() -> None:
    result = CliRunner().invoke(app, ["llm", "serve", "--help"])
    assert result.exit_code == 0, result.output
    assert all(opt in result.output for opt in ("--port", "--threads", "--ctx"))
    result = CliRunner().invoke(app, ["llm", "serve", "--port", "0"])
    assert result.exit_code == 2  # refused by the option's range, before any model work

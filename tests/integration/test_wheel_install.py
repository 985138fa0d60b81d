"""The wheel as a user installs it: built from this checkout, installed into a fresh virtualenv,
then run from a directory that is not the checkout: ``cca --help``, ``cca train`` on a small
fixture, ``cca classify`` and ``cca serve``. Rules, suites, migrations and DAG files must come
from the installed packages, never from the source tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import FIXTURES, ROOT
from tests.integration.serve_process import stop_tree
from tests.servers import free_port

PACKAGES = ("cli", "dags", "serving", "training", "evaluation", "pipelines", "cascade", "rules",
            "redaction", "cca")
PACKAGE_DATA = ("rules/banking.yaml", "rules/departments/banking77.yaml",
                "pipelines/expectations/raw_tickets.json",
                "pipelines/expectations/clean_tickets.json",
                "pipelines/expectations/training_set.json",
                "cca/store/migrations/env.py", "cca/store/migrations/versions/0001_initial.py",
                "dags/prepare_tickets.py", "dags/assets.py", "redaction/data/given_names.txt")
READY_TIMEOUT_S = 180


def _uv() -> str:
    """uv sets ``UV`` for the processes it runs (``make test`` runs pytest through it)."""
    found = os.environ.get("UV") or shutil.which("uv")
    assert found, "uv not found: run the tests with `make test` (uv is what installs the wheel)"
    return found


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 900) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stderr}"
    return done


@dataclass(frozen=True)
class Installed:
    venv: Path
    workdir: Path
    env: dict[str, str]

    def cca(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return _run([str(self.venv / "bin" / "cca"), *args], self.workdir, self.env, timeout)

    def python(self, code: str) -> str:
        return _run([str(self.venv / "bin" / "python"), "-c", code], self.workdir,
                    self.env).stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built as `pip install .` builds from a published sdist: the sdist first, then the wheel
    from it (the source tree's links are not in an sdist)."""
    out = tmp_path_factory.mktemp("dist")
    _run([_uv(), "build", "--out-dir", str(out)], ROOT)
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """A fresh virtualenv with the wheel and the locked versions of its dependencies."""
    base = tmp_path_factory.mktemp("installed")
    venv, workdir = base / "venv", base / "elsewhere"
    workdir.mkdir()
    uv = _uv()
    pins = base / "constraints.txt"
    pins.write_text(_run([uv, "export", "--frozen", "--no-hashes", "--no-emit-project",
                          "--extra", "lifecycle", "--extra", "serving", "--no-dev"],
                         ROOT).stdout)
    _run([uv, "venv", "--python", "3.11", str(venv)], base)
    _run([uv, "pip", "install", "--python", str(venv / "bin" / "python"), "--constraints",
          str(pins), f"{wheel}[lifecycle,serving]"], base)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CCA_", "BENTOML_", "PROMETHEUS_", "VIRTUAL_ENV", "UV_"))
           and k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update({"CCA_HOME": str(base / "home"), "CCA_NO_PROGRESS": "1", "COLUMNS": "200",
                "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}"})
    return Installed(venv, workdir, env)


def test_wheel_holds_every_package_and_its_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in PACKAGES:
        assert f"{package}/__init__.py" in names, package
    missing = [path for path in PACKAGE_DATA if path not in names]
    assert not missing, missing
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]


def test_code_and_data_come_from_the_install(installed: Installed) -> None:
    paths = json.loads(installed.python(
        "import json, cli, cca; from cca.settings import Settings; "
        "from cca.store.database import MIGRATIONS; from cli.airflow_env import DAGS_FOLDER; "
        "s = Settings(); print(json.dumps([cli.__file__, cca.__file__, str(s.rules_path), "
        "str(s.ge_suites_dir), str(MIGRATIONS), str(DAGS_FOLDER)]))"))
    site = str(installed.venv)
    outside = [p for p in paths if not p.startswith(site)]
    assert not outside, f"found outside the virtualenv: {outside}"
    assert all(Path(p).exists() for p in paths), paths
    assert str(ROOT) not in " ".join(paths)


def test_help(installed: Installed) -> None:
    out = installed.cca("--help").stdout
    for command in ("run", "train", "classify", "evaluate", "serve", "airflow"):
        assert command in out


@pytest.fixture(scope="module")
def trained(installed: Installed) -> Installed:
    """``cca train`` on the fixture, with the packaged rules and suites (no CCA_RULES_PATH)."""
    fixture = installed.workdir / "tickets.csv"
    shutil.copy(FIXTURES / "service_desk.csv", fixture)
    done = installed.cca("train", "--data", fixture.name, "--text-col", "message",
                         "--label-col", "intent", "--departments",
                         str(FIXTURES / "service_desk_departments.yaml"))
    assert "trained clf-" in done.stderr, done.stderr
    return installed


def test_train_then_classify(trained: Installed) -> None:
    out = trained.cca("classify", "My card was charged twice for one order", "--json").stdout
    decision = json.loads(out)
    assert decision["stage"] in ("rules", "cache", "classifier", "llm", "review")
    assert decision["model_version"].startswith("clf-")


@contextlib.contextmanager
def _serving(installed: Installed, port: int) -> Iterator[subprocess.Popen[bytes]]:
    log = installed.workdir / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(installed.venv / "bin" / "cca"), "serve", "--port",
                                 str(port)], cwd=installed.workdir, env=installed.env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            pytest.fail(f"cca serve not ready:\n{log.read_text(errors='replace')[-3000:]}")
        yield proc
    finally:
        stop_tree(proc)


def test_serve_answers_and_stops(trained: Installed) -> None:
    port = free_port()
    token = trained.cca("token", "--scope", "classify").stdout.strip().splitlines()[-1]
    with _serving(trained, port) as proc:
        r = httpx.post(f"http://127.0.0.1:{port}/classify", timeout=60,
                       headers={"Authorization": f"Bearer {token}"},
                       json={"ticket": {"id": "wheel-1", "body": "I forgot my password"}})
        assert r.status_code == 200, r.text
        assert r.json()["decision"]["ticket_id"] == "wheel-1"
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(30) == 0
    trained.cca("db", "stop")

"""The environment Airflow runs in: its home inside ``CCA_HOME``, never ``~/airflow``.

``airflow`` reads ``AIRFLOW_HOME`` once, when it is first imported, so this module never
imports it: set the variables first (``cca airflow ...``, the Makefile, the DAG tests), then
start Airflow.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from cca.package_data import data_path
from cca.settings import Settings, get_settings

DAGS_FOLDER = data_path("dags")


def airflow_env(settings: Settings, base: Mapping[str, str] | None = None,
                dags_folder: Path = DAGS_FOLDER) -> dict[str, str]:
    """``base`` (default ``os.environ``) plus what Airflow needs to run this project's DAGs.

    ``AIRFLOW_HOME`` and ``CCA_HOME`` always follow ``settings`` (tasks read the same home as
    the command that started Airflow); the metadata database (SQLite under the Airflow home),
    the DAG folder and examples off are defaults that ``AIRFLOW__*`` variables in ``base``
    override, e.g. ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` for a PostgreSQL metadata DB.
    """
    env = dict(os.environ if base is None else base)
    home = settings.airflow_home
    env["AIRFLOW_HOME"] = str(home)
    env["CCA_HOME"] = str(settings.home)
    env.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(dags_folder))
    env.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    env.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home / 'airflow.db'}")
    return env


def exec_airflow(args: list[str], settings: Settings | None = None) -> None:
    """Replace this process with ``airflow <args>`` in the project's Airflow environment.

    The ``airflow`` beside this interpreter (the project's venv) is preferred to one on PATH.
    """
    s = settings or get_settings()
    s.airflow_home.mkdir(parents=True, exist_ok=True)
    beside = Path(sys.executable).with_name("airflow")
    command = str(beside) if beside.exists() else "airflow"
    os.execvpe(command, [command, *args], airflow_env(s))


if __name__ == "__main__":  # python -m cli.airflow_env dags test prepare_tickets
    exec_airflow(sys.argv[1:])

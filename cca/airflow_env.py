"""The environment Airflow runs in: its home inside ``CCA_HOME``, never ``~/airflow``.

``airflow`` reads ``AIRFLOW_HOME`` once, when it is first imported, so this module never
imports it: set the variables first (``cca airflow ...``, the Makefile, the DAG tests), then
start Airflow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from cca.settings import PROJECT_ROOT, Settings

DAGS_FOLDER = PROJECT_ROOT / "dags"


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

"""Files the packages ship beside their code (rules, department maps, validation suites,
migrations, DAG files), found through ``importlib.resources``.

The same lookup works in a checkout, an editable install and a wheel installed anywhere, so
nothing depends on the directory the project was cloned into.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_path(package: str, *parts: str) -> Path:
    """The on-disk path of a file or folder inside an installed package.

    The packages are installed as plain directories (never zipped), so the resource is a real
    path that YAML loaders, Alembic and Airflow can be handed.
    """
    return Path(str(resources.files(package).joinpath(*parts)))

"""Files the packages ship beside their code (rules, department maps, validation suites,
migrations, DAG files), found through Python's import system.

The same lookup works in a checkout, an editable install and a wheel installed anywhere, so
nothing depends on the directory the project was cloned into.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path


def data_path(package: str, *parts: str) -> Path:
    """The on-disk path of a file or folder inside an installed package.

    The package is located with importlib's finders (what ``importlib.resources`` uses) but not
    imported: the settings, in this kernel, name the default rules and suites of packages
    above it and must not run their code. The packages are installed as plain directories
    (never zipped), so the path can be handed to YAML loaders, Alembic and Airflow.
    """
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"no installed package {package!r}")
    return Path(spec.submodule_search_locations[0]).joinpath(*parts)

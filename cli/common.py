"""What every command shares: settings, the database, progress bars, one-line errors."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cca.errors import CCAError, ConfigError
from cca.settings import Settings, get_settings

if TYPE_CHECKING:
    from cca.store import Database

console = Console(stderr=True)
stdout = Console()


def settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"CCA_{'_'.join(map(str, err['loc'])).upper()}: {err['msg']}") from exc


@contextmanager
def database() -> Iterator[Database]:
    # deferred: SQLAlchemy and psycopg load only for commands that use the store
    from cca.store import open_database

    db = open_database(settings())
    try:
        yield db
    finally:
        db.dispose()


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Any]:
    """A rich progress bar on stderr; ``advance(n)`` moves it. ``CCA_NO_PROGRESS=1`` hides it."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False,
                  disable=bool(os.environ.get("CCA_NO_PROGRESS"))) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int) -> None:
            bar.advance(task, n)

        def set_total(n: int) -> None:
            bar.update(task, total=n)

        advance.set_total = set_total  # type: ignore[attr-defined]
        yield advance


def print_json(data: Any) -> None:
    stdout.print_json(json.dumps(data, default=str))


def run_app(app: Any) -> None:
    """Run the typer app; expected failures become one line on stderr and a non-zero exit."""
    try:
        app()
    except CCAError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("CCA_DEBUG"):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        console.print(
            f"[red]internal error:[/red] {type(exc).__name__}: {first}"
            " (set CCA_DEBUG=1 for the traceback)",
            highlight=False, soft_wrap=True,
        )
        sys.exit(1)

"""``cca import`` and ``cca index``: get labelled tickets into the store and the vector cache."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cca.departments import load_department_map
from cli.common import console, database, progress_bar, settings
from pipelines.read_tickets import Columns, read_ticket_file

if TYPE_CHECKING:
    from cca.store import Database
    from pipelines.import_tickets import ImportReport

TextCol = Annotated[str, typer.Option("--text-col", help="Column with the ticket text.")]
LabelCol = Annotated[str | None, typer.Option("--label-col", help="Column with the label.")]


def do_import(
    db: Database, path: Path, cols: Columns, source: str | None, departments: Path | None,
    strict: bool = True,
) -> ImportReport:
    # deferred: SQLAlchemy and psycopg load only for commands that use the store
    from pipelines.import_tickets import import_parsed

    s = settings()
    parsed = read_ticket_file(path, cols, source=source, max_chars=s.max_text_chars)
    dept_map = load_department_map(departments or s.department_map)
    report = import_parsed(db, parsed, dept_map, strict=strict)
    console.print(
        f"imported {path.name}: {report.inserted} new, {report.updated} updated, "
        f"{report.unchanged} unchanged, {report.duplicates} duplicate rows, "
        f"{report.labelled} labelled, {len(report.rejected)} rejected"
    )
    for reject in report.rejected[:10]:
        console.print(f"  rejected line {reject.line}: {reject.reason}", highlight=False)
    return report


def do_index(db: Database) -> dict:
    """Embed and index what is new; the same function the prepare_tickets DAG runs last."""
    # deferred: the lifecycle loads the embedders, spaCy, Great Expectations and datasketch
    from pipelines.lifecycle import index_pending

    report = index_pending(settings(), db, progress_bar)
    for m in report["models"]:
        console.print(f"{m['model_id']}: embedded {m['embedded']} new or changed of "
                      f"{m['considered']} prepared labelled tickets ({m['per_second']:.0f}/s); "
                      f"{m['relabelled']} relabelled")
    return report


def import_cmd(
    file: Annotated[Path, typer.Argument(help="CSV, TSV or JSONL of tickets.")],
    text_col: TextCol = "text",
    label_col: LabelCol = None,
    id_col: Annotated[str | None, typer.Option(help="Ticket id column (else from text).")] = None,
    subject_col: Annotated[str | None, typer.Option(help="Subject column.")] = None,
    customer_col: Annotated[str | None, typer.Option(help="Customer reference column.")] = None,
    created_col: Annotated[str | None, typer.Option(help="Created-at column (ISO 8601).")] = None,
    priority_col: Annotated[str | None, typer.Option(help="Priority column.")] = None,
    source: Annotated[str | None, typer.Option(help="Source name (default: file stem).")] = None,
    departments: Annotated[
        Path | None, typer.Option(help="YAML map of department -> labels.")
    ] = None,
    skip_invalid: Annotated[
        bool, typer.Option(help="Import the valid records and report the rest.")
    ] = False,
) -> None:
    """Import tickets (and validated labels) in one transaction; idempotent by ticket id."""
    cols = Columns(text=text_col, label=label_col, id=id_col, subject=subject_col,
                   customer=customer_col, created_at=created_col, priority=priority_col)
    with database() as db:
        do_import(db, file, cols, source, departments, strict=not skip_invalid)


def index_cmd() -> None:
    """Embed new or changed prepared tickets and upsert them into the vector cache."""
    with database() as db:
        do_index(db)

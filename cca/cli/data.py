"""``cca import`` and ``cca index``: get labelled tickets into the store and the vector cache."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cca.cli.common import console, database, progress_bar, settings
from cca.departments import load_department_map
from pipelines.read_tickets import Columns, read_ticket_file

if TYPE_CHECKING:
    from cca.store import Database
    from pipelines.import_tickets import ImportReport
    from pipelines.index_tickets import IndexReport

TextCol = Annotated[str, typer.Option("--text-col", help="Column with the ticket text.")]
LabelCol = Annotated[str | None, typer.Option("--label-col", help="Column with the label.")]


def do_import(
    db: Database, path: Path, cols: Columns, source: str | None, departments: Path | None,
    strict: bool = True,
) -> ImportReport:
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


def do_index(db: Database) -> list[IndexReport]:
    """The cache's vectors (searchable), then the deep model's (kept for training)."""
    from cca.embeddings import get_deep_embedder, get_embedder
    from pipelines.index_tickets import index_labelled_tickets

    s = settings()
    reports = []
    for embedder, hnsw in ((get_embedder(s), True), (get_deep_embedder(s), False)):
        if embedder is None:
            continue
        with progress_bar(f"embedding ({embedder.model_id})") as advance:
            report = index_labelled_tickets(db, embedder, hnsw=hnsw,
                                            on_total=advance.set_total, progress=advance)
        console.print(f"{embedder.model_id}: embedded {report.embedded} new or changed of "
                      f"{report.considered} labelled tickets; {report.relabelled} relabelled")
        reports.append(report)
    return reports


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
    """Embed new or changed labelled tickets and upsert them into the vector cache."""
    with database() as db:
        do_index(db)

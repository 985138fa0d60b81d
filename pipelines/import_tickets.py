"""Store a parsed ticket file in one transaction: all of it, or (strict) nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection

from cca.departments import DepartmentMap
from cca.store import Database
from cca.store.quarantine import QuarantineItem, quarantine
from cca.store.tickets_repo import upsert_tickets
from pipelines.read_tickets import ParsedFile, Reject


@dataclass
class ImportReport:
    file: str
    read: int
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    labelled: int = 0
    rejected: list[Reject] = field(default_factory=list)


def _unknown_labels(parsed: ParsedFile, departments: DepartmentMap) -> None:
    """Outside a strict import, a ticket whose label is in no department is quarantined."""
    if not departments.mapping:
        return
    keep = []
    for ticket in parsed.tickets:
        label = parsed.labels.get(ticket.id)
        if label is not None and label not in departments.mapping:
            record = ticket.model_dump(mode="json") | {"label": label}
            parsed.rejects.append(Reject(parsed.lines.get(ticket.id, 0),
                                         f"unknown label {label!r} (in no department)", record))
            del parsed.labels[ticket.id]
        else:
            keep.append(ticket)
    parsed.tickets = keep


def import_parsed(
    db: Database, parsed: ParsedFile, departments: DepartmentMap, strict: bool = True,
    stage: str = "import", also: Callable[[Connection, ImportReport], None] | None = None,
) -> ImportReport:
    """Write tickets and their validated labels in one transaction.

    Strict: any reject or unknown label writes nothing. Otherwise the good records are stored
    and every reject goes to the quarantine table with its line and reason.
    """
    if strict:
        parsed.refuse_if_rejected("nothing imported")
        departments.check_covers(set(parsed.labels.values()))
    else:
        _unknown_labels(parsed, departments)
    labels = {tid: (lab, departments.department(lab) or lab) for tid, lab in parsed.labels.items()}
    source = parsed.tickets[0].source if parsed.tickets else parsed.path.stem
    items = [
        QuarantineItem(stage=stage, source=source,
                       location=f"{parsed.path.name}:{r.line}" if r.line else parsed.path.name,
                       reason=r.reason, payload=r.record)
        for r in parsed.rejects
    ]
    with db.begin() as conn:
        counts = upsert_tickets(conn, parsed.tickets, labels)
        quarantine(conn, items)
        report = ImportReport(
            file=str(parsed.path),
            read=len(parsed.tickets) + len(parsed.rejects) + parsed.duplicates,
            inserted=counts.inserted,
            updated=counts.updated,
            unchanged=counts.unchanged,
            duplicates=parsed.duplicates,
            labelled=len(labels),
            rejected=parsed.rejects,
        )
        if also is not None:  # e.g. the inbox's ingested-file record, in the same commit
            also(conn, report)
    return report

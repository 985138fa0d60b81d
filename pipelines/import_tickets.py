"""Store a parsed ticket file in one transaction: all of it, or (strict) nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

from cca.departments import DepartmentMap
from cca.store import Database
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


def import_parsed(
    db: Database, parsed: ParsedFile, departments: DepartmentMap, strict: bool = True
) -> ImportReport:
    """Write tickets and their validated labels; a strict import with any reject writes nothing."""
    if strict:
        parsed.refuse_if_rejected("nothing imported")
    departments.check_covers(set(parsed.labels.values()))
    labels = {tid: (lab, departments.department(lab) or lab) for tid, lab in parsed.labels.items()}
    with db.begin() as conn:
        counts = upsert_tickets(conn, parsed.tickets, labels)
    return ImportReport(
        file=str(parsed.path),
        read=len(parsed.tickets) + len(parsed.rejects) + parsed.duplicates,
        inserted=counts.inserted,
        updated=counts.updated,
        unchanged=counts.unchanged,
        duplicates=parsed.duplicates,
        labelled=len(labels),
        rejected=parsed.rejects,
    )

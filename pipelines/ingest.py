"""Bring tickets in: files dropped in the inbox folder, and connectors to ticketing systems.

Whatever cannot be accepted goes to the quarantine table with its reason; a file that cannot
be read at all moves to ``inbox/failed`` with a ``.reason`` note. Nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml
from pydantic import ValidationError
from sqlalchemy.engine import Connection

from cca.departments import DepartmentMap
from cca.errors import CCAError, InputError, describe_yaml_error
from cca.settings import Settings
from cca.store import Database, ingest_repo, intake_repo
from cca.store.ingest_repo import IngestedFile
from cca.store.quarantine import QuarantineItem, quarantine
from cca.store.tickets_repo import known_ids, upsert_tickets
from cca.tickets import Ticket
from pipelines.connectors.base import TicketConnector
from pipelines.import_tickets import ImportReport, import_parsed
from pipelines.integrations.pulled import pulled_event
from pipelines.read_tickets import Columns, file_columns, read_ticket_file

TICKET_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson")
# Canonical column names tried in order when a file comes without a sidecar mapping.
_CANDIDATES = {
    "text": ("body", "text", "description", "message"),
    "label": ("label", "intent", "category"),
    "id": ("id", "ticket_id"),
    "subject": ("subject", "title"),
    "customer": ("customer_ref", "customer", "customer_id"),
    "created_at": ("created_at", "created"),
    "priority": ("priority",),
}


@dataclass
class IngestReport:
    files: int = 0
    skipped_already_ingested: int = 0
    failed_files: int = 0
    tickets_new: int = 0
    tickets_updated: int = 0
    labelled: int = 0
    quarantined: int = 0
    details: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def columns_for(path: Path) -> tuple[Columns, str | None]:
    """Columns from a sidecar ``<file>.columns.yaml`` if present, else from canonical names."""
    sidecar = path.with_name(path.name + ".columns.yaml")
    if sidecar.exists():
        try:
            spec = yaml.safe_load(sidecar.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise InputError(f"{sidecar.name}: malformed YAML: {describe_yaml_error(exc)}"
                             ) from exc
        if not isinstance(spec, dict) or "text" not in spec:
            raise InputError(f"{sidecar}: expected a mapping with at least 'text: <column>'")
        source = spec.pop("source", None)
        unknown = set(spec) - set(_CANDIDATES)
        if unknown:
            raise InputError(f"{sidecar}: unknown keys {sorted(unknown)} "
                             f"(use {', '.join(_CANDIDATES)}, source)")
        return Columns(**{k: str(v) for k, v in spec.items()}), source
    present = file_columns(path)
    found = {key: next((c for c in names if c in present), None)
             for key, names in _CANDIDATES.items()}
    if not found["text"]:
        raise InputError(f"{path.name}: no text column (tried {', '.join(_CANDIDATES['text'])}; "
                         f"or add {sidecar.name})")
    return Columns(**found), None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _move(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():
        target = folder / f"{path.stem}-{datetime.now(UTC):%Y%m%dT%H%M%S%f}{path.suffix}"
    shutil.move(str(path), target)
    sidecar = path.with_name(path.name + ".columns.yaml")
    if sidecar.exists():
        shutil.move(str(sidecar), target.with_name(target.name + ".columns.yaml"))
    return target


def ingest_file(db: Database, settings: Settings, path: Path,
                departments: DepartmentMap) -> dict:
    """One dropped file: good records stored, bad ones quarantined, in one transaction."""
    digest = _sha256(path)
    with db.begin() as conn:
        seen = ingest_repo.file_ingested(conn, digest)
    if seen:
        return {"file": path.name, "skipped": "already ingested (same content)"}
    cols, source = columns_for(path)
    parsed = read_ticket_file(path, cols, source=source or path.stem,
                              max_chars=settings.max_text_chars)

    def remember(conn: Connection, report: ImportReport) -> None:
        # Same commit as the tickets and quarantine rows: a retried task skips the file
        # instead of quarantining its bad records twice.
        ingest_repo.record_file(conn, IngestedFile(
            sha256=digest, name=path.name, source=source or path.stem,
            tickets=len(parsed.tickets), quarantined=len(report.rejected)))

    report = import_parsed(db, parsed, departments, strict=False, stage="ingest",
                           also=remember)
    return {"file": path.name, "new": report.inserted, "updated": report.updated,
            "unchanged": report.unchanged, "labelled": report.labelled,
            "quarantined": len(report.rejected)}


def ingest_inbox(db: Database, settings: Settings, departments: DepartmentMap) -> IngestReport:
    """Every ticket file in the inbox, oldest first; each moves to processed/ or failed/."""
    inbox = settings.inbox
    inbox.mkdir(parents=True, exist_ok=True)
    report = IngestReport()
    files = sorted((p for p in inbox.iterdir() if p.is_file()
                    and p.suffix.lower() in TICKET_SUFFIXES), key=lambda p: p.stat().st_mtime)
    day = f"{datetime.now(UTC):%Y-%m-%d}"
    for path in files:
        report.files += 1
        try:
            result = ingest_file(db, settings, path, departments)
        except CCAError as exc:
            report.failed_files += 1
            moved = _move(path, inbox / "failed" / day)
            moved.with_name(moved.name + ".reason").write_text(f"{exc}\n")
            with db.begin() as conn:
                quarantine(conn, [QuarantineItem(stage="ingest", source=path.stem,
                                                 location=str(moved), reason=str(exc),
                                                 payload={"file": str(moved)})])
            report.quarantined += 1
            report.details.append({"file": path.name, "failed": str(exc)})
            continue
        _move(path, inbox / "processed" / day)
        if "skipped" in result:
            report.skipped_already_ingested += 1
        else:
            report.tickets_new += result["new"]
            report.tickets_updated += result["updated"]
            report.labelled += result["labelled"]
            report.quarantined += result["quarantined"]
        report.details.append(result)
    return report


def ingest_from_connector(db: Database, connector: TicketConnector,
                          departments: DepartmentMap, *, write_back: bool = False) -> dict:
    """Fetch everything since the stored cursor; tickets, quarantine and cursor in one commit.

    With ``write_back``, tickets new to the store (after the first, backfilling pull) are
    queued for routing and write-back in the same commit (``pipelines.integrations``)."""
    with db.begin() as conn:
        cursor = ingest_repo.get_cursor(conn, connector.name)
    batch = connector.fetch(cursor)
    tickets, labels, items = [], {}, []
    for record in batch.records:
        fields = {k: v for k, v in record.items() if k != "label"}
        label = record.get("label")
        try:
            ticket = Ticket(**fields)
        except ValidationError as exc:
            err = exc.errors()[0]
            items.append(QuarantineItem("ingest", connector.name,
                                        f"{connector.name}:{record.get('id')}",
                                        f"{'.'.join(map(str, err['loc']))}: {err['msg']}",
                                        record))
            continue
        if label and departments.mapping and label not in departments.mapping:
            items.append(QuarantineItem("ingest", connector.name, f"{connector.name}:{ticket.id}",
                                        f"unknown label {label!r} (in no department)", record))
            continue
        tickets.append(ticket)
        if label:
            labels[ticket.id] = (label, departments.department(label) or label)
    items += [QuarantineItem("ingest", connector.name, loc, why, raw)
              for loc, why, raw in batch.rejects]
    queued = 0
    with db.begin() as conn:
        known = known_ids(conn, [t.id for t in tickets]) if write_back else set()
        fresh = [t for t in tickets if t.id not in known] if write_back and cursor else []
        counts = upsert_tickets(conn, tickets, labels, origin=connector.name)
        for event in filter(None, map(pulled_event, fresh)):
            queued += intake_repo.enqueue(conn, event.to_dict()) is not None
        quarantine(conn, items)
        if batch.next_cursor:
            ingest_repo.set_cursor(conn, connector.name, batch.next_cursor)
    return {"connector": connector.name, "new": counts.inserted, "updated": counts.updated,
            "unchanged": counts.unchanged, "labelled": len(labels), "quarantined": len(items),
            "cursor": batch.next_cursor, "queued_for_writeback": queued}

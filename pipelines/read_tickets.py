"""Read a CSV or JSONL file of tickets into validated records, with a reason for every reject.

Nothing here touches the database, so a bad file is found out before anything is written.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from cca.errors import InputError
from cca.tickets import Ticket


@dataclass
class Reject:
    line: int
    reason: str
    record: dict = field(default_factory=dict, repr=False)


@dataclass
class ParsedFile:
    path: Path
    tickets: list[Ticket] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)
    duplicates: int = 0
    lines: dict[str, int] = field(default_factory=dict)

    def refuse_if_rejected(self, consequence: str) -> None:
        """One line naming the first bad record, for commands that take a file whole."""
        if self.rejects:
            first = self.rejects[0]
            more = f" (and {len(self.rejects) - 1} more)" if len(self.rejects) > 1 else ""
            raise InputError(f"{self.path}: line {first.line}: {first.reason}{more}; "
                             f"{consequence}")


@dataclass(frozen=True)
class Columns:
    text: str = "text"
    label: str | None = None
    id: str | None = None
    subject: str | None = None
    customer: str | None = None
    created_at: str | None = None
    priority: str | None = None


def _decode(path: Path) -> str:
    """Bytes that are not UTF-8 survive as surrogates so the record holding them is rejected
    on its own line instead of refusing the whole file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from exc
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return raw.decode("utf-8", errors="surrogateescape")


def _bad_encoding(rec: dict) -> str | None:
    for key, value in rec.items():
        for item in (key, value):
            if isinstance(item, str) and _SURROGATES.search(item):
                return f"not valid UTF-8 in {key.encode('utf-8', 'replace').decode()!r}"
    return None


_SURROGATES = re.compile("[\udc80-\udcff]")


def _records(path: Path, text: str, cols: Columns) -> list[tuple[int, dict | None, str]]:
    """(line number, record or None, parse error) for every data line."""
    wanted = [c for c in (cols.text, cols.label, cols.id, cols.subject, cols.customer,
                          cols.created_at, cols.priority) if c]
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        out: list[tuple[int, dict | None, str]] = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                out.append((n, None, f"invalid JSON: {exc.msg}"))
                continue
            if not isinstance(rec, dict):
                out.append((n, None, "a JSONL line must be an object"))
                continue
            out.append((n, rec, ""))
        present = set().union(*(r.keys() for _, r, _ in out if r)) if out else set()
    elif suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        present = set(reader.fieldnames or [])
        try:
            out = [(reader.line_num, dict(rec), "") for rec in reader]
        except csv.Error as exc:
            raise InputError(f"{path}: malformed CSV at line {reader.line_num}: {exc}") from exc
    else:
        raise InputError(f"{path}: unsupported file type {suffix!r} (use .csv, .tsv or .jsonl)")
    missing = [c for c in wanted if c not in present]
    if missing:
        shown = ", ".join(sorted(present)[:12]) or "none"
        raise InputError(f"{path}: no column {', '.join(map(repr, missing))} (columns: {shown})")
    return out


def file_columns(path: Path) -> set[str]:
    """The columns a file offers (CSV header, or keys of the JSONL records)."""
    text = _decode(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        reader = csv.reader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        return set(next(reader, []))
    keys: set[str] = set()
    for _, rec, _ in _records(path, text, Columns(text="")):
        keys |= set(rec or {})
    return keys


def _text_id(source: str, text: str) -> str:
    return f"{source}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}"


def read_ticket_file(
    path: Path,
    cols: Columns,
    source: str | None = None,
    max_chars: int = 20_000,
    collapse_duplicates: bool = True,
) -> ParsedFile:
    """Every record becomes a ticket or a reject with its line and reason.

    Without an id column a ticket's id derives from its text, so re-importing the same file
    is idempotent and identical texts collapse into one ticket (counted as duplicates);
    an evaluation keeps every row instead (``collapse_duplicates=False``).
    """
    source = source or path.stem
    parsed = ParsedFile(path=path)
    first_line: dict[str, int] = {}
    for line, rec, error in _records(path, _decode(path), cols):
        if rec is None:
            parsed.rejects.append(Reject(line, error, {}))
            continue
        problem = _problem(rec, cols, max_chars)
        if problem:
            parsed.rejects.append(Reject(line, problem, rec))
            continue
        label = str(rec[cols.label]).strip() if cols.label else None
        tid = str(rec.get(cols.id) or "").strip() if cols.id else ""
        derived = not tid
        tid = tid or _text_id(source, f"{_subject(rec, cols)}\n{rec[cols.text]}".strip())
        if tid in first_line:
            if derived and parsed.labels.get(tid) == label:
                parsed.duplicates += 1
                if collapse_duplicates:
                    continue
                tid = f"{tid}-L{line}"
            else:
                why = "conflicting label for identical text" if derived else "duplicate id"
                parsed.rejects.append(
                    Reject(line, f"{why} {tid!r} (first at line {first_line[tid]})", rec)
                )
                continue
        ticket = _to_ticket(rec, cols, tid, source)
        if isinstance(ticket, str):
            parsed.rejects.append(Reject(line, ticket, rec))
            continue
        first_line[tid] = line
        parsed.lines[tid] = line
        parsed.tickets.append(ticket)
        if label is not None:
            parsed.labels[tid] = label
    return parsed


def _problem(rec: dict, cols: Columns, max_chars: int) -> str | None:
    """Why the record cannot be a ticket (bytes, text or label), or None."""
    bad = _bad_encoding(rec)
    if bad:
        return bad
    body = rec.get(cols.text)
    if not isinstance(body, str) or not body.strip():
        return f"empty or missing text in {cols.text!r}"
    if len(body) > max_chars:
        return f"text is {len(body)} characters (limit {max_chars})"
    if cols.label:
        label = rec.get(cols.label)
        if not isinstance(label, str | int) or not str(label).strip():
            return f"empty or missing label in {cols.label!r}"
    return None


def _subject(rec: dict, cols: Columns) -> str:
    return str(rec.get(cols.subject) or "") if cols.subject else ""


def _to_ticket(rec: dict, cols: Columns, tid: str, source: str) -> Ticket | str:
    """The record as a ticket, or the first field the ticket model refused, as a reason."""
    fields: dict = {"id": tid, "source": source, "subject": _subject(rec, cols),
                    "body": rec[cols.text]}
    if cols.customer and rec.get(cols.customer):
        fields["customer_ref"] = str(rec[cols.customer])
    if cols.created_at and rec.get(cols.created_at):
        fields["created_at"] = rec[cols.created_at]
    if cols.priority and rec.get(cols.priority):
        fields["priority"] = str(rec[cols.priority]).lower()
    try:
        return Ticket(**fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        return f"{'.'.join(map(str, err['loc']))}: {err['msg']}"

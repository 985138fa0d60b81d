"""Right to deletion for files under CCA_HOME: the inbox's ticket files, and reports.

A file dropped in the inbox is kept after import (``inbox/processed/<day>/``) or, when it
could not be read, moved aside (``inbox/failed/<day>/``) until retention; both hold the
customer's raw text. Erasure rewrites each such file without the customer's records.

The rewrite is staged (new files written and fsync'ed beside the old ones) while the
database transaction is still open, and swapped in only after it commits: a failure before
the commit leaves every file as it was, so an erasure is never half done.

A record is the customer's when one of its fields is one of their references in any
spelling (``canonical_customer``) or one of their ticket ids. The file's columns are not
needed: a sidecar mapping may name the customer column anything.

Validation results and Data Docs name failing tickets by id (and reports may name
customers): there the customer's ids and references are replaced by ``[erased]``.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cca.fsync import fsync_dir
from redaction.sanitizer import canonical_customer

_SKIP_SUFFIXES = (".columns.yaml",)


@dataclass
class StagedFiles:
    """Rewritten copies waiting to replace their originals (``commit``) or to go (``abort``)."""

    swaps: list[tuple[Path, Path]] = field(default_factory=list)  # (staged copy, original)
    records: int = 0  # inbox records removed
    spool_lines: int = 0  # delivered spool lines blanked (in place: nothing to swap)

    def commit(self) -> int:
        """Swap every staged copy in; how many files changed."""
        for staged, original in self.swaps:
            os.replace(staged, original)
        for folder in {original.parent for _, original in self.swaps}:
            fsync_dir(folder)
        return len(self.swaps)

    def abort(self) -> None:
        for staged, _ in self.swaps:
            staged.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Subject:
    core: str
    ticket_ids: frozenset[str]

    def owns(self, value: object) -> bool:
        if value is None or isinstance(value, dict | list):
            return False
        text = str(value).strip()
        return bool(text) and (text in self.ticket_ids or canonical_customer(text) == self.core)

    def in_line(self, line: str) -> bool:
        """For a line that cannot be parsed: any id in it, or any field-like token that is
        the customer's reference."""
        if any(tid in line for tid in self.ticket_ids):
            return True
        tokens = line.replace("\t", ",").replace(";", ",").replace('"', ",").split(",")
        return any(self.owns(t) for t in tokens)


def stage_inbox_erasure(inbox: Path, core: str, ticket_ids: Iterable[str]) -> StagedFiles:
    """Stage the rewrite of every file under ``inbox`` holding the customer's records.
    Raises ``OSError`` when a file cannot be read or written (nothing is left staged)."""
    subject = _Subject(core, frozenset(ticket_ids))
    staged = StagedFiles()
    if not core or not inbox.is_dir():
        return staged
    try:
        for path in sorted(p for p in inbox.rglob("*") if p.is_file()):
            if path.name.endswith(_SKIP_SUFFIXES) or ".erasing-" in path.name:
                continue
            raw = path.read_bytes().decode("utf-8", "surrogateescape")
            kept, removed = _without_subject(path, raw, subject)
            if not removed:
                continue
            staged.swaps.append((_stage_copy(path, kept), path))
            staged.records += removed
    except BaseException:
        staged.abort()
        raise
    return staged


def stage_report_scrub(roots: Iterable[Path], needles: Iterable[str],
                       staged: StagedFiles) -> StagedFiles:
    """Stage, into ``staged``, copies of the text files under ``roots`` (validation results
    and Data Docs, reports) with every ``needle`` (ticket ids, references) replaced by
    ``[erased]``, in its plain, JSON-escaped and HTML-escaped spellings. Binary files are
    left alone. Raises ``OSError`` (after removing what it staged)."""
    forms = sorted({f for n in needles if n for f in _spellings(n)}, key=len, reverse=True)
    if not forms:
        return staged
    try:
        for root in (r for r in roots if r.is_dir()):
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                if ".erasing-" in path.name:
                    continue
                try:
                    text = path.read_bytes().decode("utf-8")
                except UnicodeDecodeError:
                    continue
                scrubbed = text
                for form in forms:
                    scrubbed = scrubbed.replace(form, ERASED)
                if scrubbed != text:
                    staged.swaps.append((_stage_copy(path, scrubbed), path))
    except BaseException:
        staged.abort()
        raise
    return staged


ERASED = "[erased]"


def _spellings(needle: str) -> set[str]:
    return {needle, json.dumps(needle)[1:-1], html.escape(needle), html.escape(needle, False)}


def _stage_copy(path: Path, text: str) -> Path:
    copy = path.with_name(f".{path.name}.erasing-{uuid.uuid4().hex[:8]}")
    with open(copy, "wb") as fh:
        fh.write(text.encode("utf-8", "surrogateescape"))
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(copy, path.stat().st_mode & 0o7777)
    return copy


def _without_subject(path: Path, raw: str, subject: _Subject) -> tuple[str, int]:
    """The file's text without the customer's records, and how many were removed."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        try:
            return _csv_without(raw, subject, "\t" if suffix == ".tsv" else ",")
        except csv.Error:
            pass  # not readable as a table (a failed file): line by line below
    lines = raw.splitlines(keepends=True)
    kept = [line for line in lines if not _line_is_subjects(line, subject, suffix)]
    return "".join(kept), len(lines) - len(kept)


def _line_is_subjects(line: str, subject: _Subject, suffix: str) -> bool:
    if suffix in (".jsonl", ".ndjson"):
        try:
            record = json.loads(line)
        except ValueError:
            return subject.in_line(line)
        if isinstance(record, dict):
            return any(subject.owns(v) for v in record.values()) or subject.in_line(line)
    return subject.in_line(line)


def _csv_without(raw: str, subject: _Subject, delimiter: str) -> tuple[str, int]:
    rows = list(csv.reader(io.StringIO(raw, newline=""), delimiter=delimiter, strict=True))
    if not rows:
        return raw, 0
    header, body = rows[0], rows[1:]
    kept = [r for r in body if not any(subject.owns(v) for v in r)]
    if len(kept) == len(body):
        return raw, 0
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(kept)
    return out.getvalue(), len(body) - len(kept)

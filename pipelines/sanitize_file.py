"""Redact the free-text fields of a JSONL file of tickets (behind ``cca sanitize``).

Only ``subject`` and ``body`` are rewritten; every other field is kept as it is. The output is
written to a temporary file and renamed at the end, so a bad input line leaves no half file.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cca.errors import InputError
from redaction import Sanitizer

FIELDS: tuple[str, ...] = ("subject", "body")


@dataclass
class SanitizeReport:
    records: int = 0
    changed: int = 0
    counts: Counter[str] = field(default_factory=Counter)


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank line; a bad line is an InputError."""
    try:
        fh = path.open("rb")  # decoded line by line, so a bad byte is named by its line
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from exc
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{path.name} line {lineno}: not valid UTF-8") from exc
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path.name} line {lineno}: invalid JSON ({exc.msg})") from exc
            if not isinstance(rec, dict):
                raise InputError(f"{path.name} line {lineno}: expected a JSON object")
            for name in FIELDS:
                if rec.get(name) is not None and not isinstance(rec[name], str):
                    raise InputError(f"{path.name} line {lineno}: '{name}' must be a string")
            yield lineno, rec


def _flush(
    batch: list[dict[str, Any]], sanitizer: Sanitizer, out: Any, report: SanitizeReport,
    batch_size: int,
) -> None:
    slots = [(i, name) for i, rec in enumerate(batch) for name in FIELDS
             if isinstance(rec.get(name), str)]
    results = sanitizer.redact_many([batch[i][name] for i, name in slots], batch_size=batch_size)
    changed: set[int] = set()
    for (i, name), res in zip(slots, results, strict=True):
        if res.counts:
            changed.add(i)
            report.counts.update(res.counts)
        batch[i][name] = res.text
    for rec in batch:
        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
    report.records += len(batch)
    report.changed += len(changed)


def sanitize_file(
    in_path: Path, out_path: Path, sanitizer: Sanitizer, *, batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> SanitizeReport:
    """Redact ``subject`` and ``body`` of every record of ``in_path`` into ``out_path``."""
    if in_path.resolve() == out_path.resolve():
        raise InputError("the output file must differ from the input file")
    if out_path.is_dir():
        raise InputError(f"{out_path} is a folder: give the output file's path")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.part")
    report = SanitizeReport()
    try:
        with tmp.open("w", encoding="utf-8") as out:
            batch: list[dict[str, Any]] = []
            for _, rec in _records(in_path):
                batch.append(rec)
                if len(batch) >= batch_size:
                    _flush(batch, sanitizer, out, report, batch_size)
                    if progress:
                        progress(len(batch))
                    batch = []
            if batch:
                _flush(batch, sanitizer, out, report, batch_size)
                if progress:
                    progress(len(batch))
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return report

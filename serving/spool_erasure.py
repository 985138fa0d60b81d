"""Right to deletion in the audit spools: delivered lines that name an erased ticket.

Each worker's spool (``serving.audit_spool``) keeps the records it delivered to PostgreSQL
until its segment is full and deleted, and those records carry the ticket as served (raw
text, customer reference). A delivered line is never read again (the cursor is past it),
so erasure overwrites it in place with spaces of the same length: offsets and the cursor
stay valid, and a redelivery from the oldest segment (cursor lost) skips a blank line as
unreadable; its rows are in PostgreSQL already. Lines after a cursor are not delivered
yet and are left alone.

Run inside the erasure's transaction: blanking a delivered line loses nothing if the
erasure is then rolled back, so a failure here (``OSError``) can roll everything back.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

_SEGMENT = "seg-" + "[0-9]" * 12 + ".jsonl"
_CURSOR = "cursor.json"  # serving.audit_spool's names


def blank_delivered(spool_root: Path, needles: Iterable[str]) -> int:
    """Blank every delivered line of every worker's spool under ``spool_root`` that holds
    one of ``needles`` as a JSON string; how many lines."""
    marks = [json.dumps(n).encode() for n in needles if n]
    if not marks or not spool_root.is_dir():
        return 0
    blanked = 0
    for spool in sorted(p for p in spool_root.iterdir() if p.is_dir()):
        cursor = _cursor(spool)
        if cursor is None:
            continue
        for path in sorted(spool.glob(_SEGMENT)):
            seg = int(path.stem[4:])
            if seg > cursor[0]:
                continue
            limit = None if seg < cursor[0] else cursor[1]
            with contextlib.suppress(FileNotFoundError):  # deleted by its worker meanwhile
                blanked += _blank(path, limit, marks)
    return blanked


def _cursor(spool: Path) -> tuple[int, int] | None:
    try:
        data = json.loads((spool / _CURSOR).read_text())
        return int(data["segment"]), int(data["offset"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None  # no cursor: nothing delivered; unreadable: the worker redelivers all


def _blank(path: Path, limit: int | None, marks: list[bytes]) -> int:
    """Overwrite the matching whole lines before ``limit`` (None: the whole file)."""
    with open(path, "rb") as f:
        data = f.read() if limit is None else f.read(limit)
    spans, start = [], 0
    for line in data.splitlines(keepends=True):
        if line.endswith(b"\n") and any(m in line for m in marks):
            spans.append((start, len(line) - 1))
        start += len(line)
    if not spans:
        return 0
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset, length in spans:
            os.pwrite(fd, b" " * length, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(spans)

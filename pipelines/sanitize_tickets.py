"""Redact every stored ticket whose text is new or changed since it was last redacted.

The redacted subject and body sit beside the raw text; from here on only they are embedded,
indexed, trained on, sent to an LLM or logged.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import sqlalchemy as sa

from cca.store import Database
from cca.tickets import ticket_text

if TYPE_CHECKING:
    from redaction import Sanitizer

Progress = Callable[[int], None]


@dataclass
class SanitizeReport:
    sanitized: int = 0
    with_pii: int = 0
    found: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def clean_hash(subject: str, body: str) -> str:
    """The same digest Ticket.content_hash gives for the redacted text (vectors key on it)."""
    return hashlib.sha256(ticket_text(subject, body).encode("utf-8")).hexdigest()


_PENDING = """
    SELECT id, subject, body, content_hash FROM tickets
    WHERE sanitized_for IS DISTINCT FROM content_hash AND raw_purged_at IS NULL
      AND (CAST(:ids AS text[]) IS NULL OR id = ANY(:ids))
    ORDER BY created_at, id
"""


def sanitize_pending(
    db: Database, sanitizer: Sanitizer, ids: Sequence[str] | None = None,
    batch_size: int = 512, on_total: Callable[[int], None] | None = None,
    progress: Progress | None = None,
) -> SanitizeReport:
    import time

    t0 = time.perf_counter()
    report = SanitizeReport()
    found: Counter[str] = Counter()
    with db.begin() as conn:
        rows = conn.execute(sa.text(_PENDING),
                            {"ids": list(ids) if ids is not None else None}).mappings().all()
    if on_total:
        on_total(len(rows))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        subjects = sanitizer.redact_many([r["subject"] or "" for r in chunk])
        bodies = sanitizer.redact_many([r["body"] or "" for r in chunk])
        updates = []
        for row, subj, body in zip(chunk, subjects, bodies, strict=True):
            counts = Counter(subj.counts) + Counter(body.counts)
            found.update(counts)
            report.with_pii += int(bool(counts))
            updates.append({"id": row["id"], "s": subj.text, "b": body.text,
                            "h": clean_hash(subj.text, body.text), "for": row["content_hash"],
                            "pii": json.dumps(dict(counts))})
        with db.begin() as conn:
            conn.execute(
                sa.text("UPDATE tickets SET clean_subject = :s, clean_body = :b, clean_hash = :h,"
                        " sanitized_for = :for, pii_found = CAST(:pii AS jsonb) WHERE id = :id"),
                updates,
            )
        report.sanitized += len(chunk)
        if progress:
            progress(len(chunk))
    report.found = dict(found)
    report.seconds = round(time.perf_counter() - t0, 2)
    return report

"""Redact every stored ticket whose text is new or changed since it was last redacted.

The redacted subject and body sit beside the raw text; from here on only they are embedded,
indexed, trained on, sent to an LLM or logged.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from cca.store import Database
from cca.store.lifecycle_repo import RedactedText, save_redacted, to_sanitize
from cca.tickets import ticket_text
from pipelines.progress import Progress
from redaction import Sanitizer


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


def sanitize_pending(
    db: Database, sanitizer: Sanitizer, ids: Sequence[str] | None = None,
    batch_size: int = 512, progress: Progress | None = None,
) -> SanitizeReport:
    """Redact in batches, each batch committed on its own (a crash loses one batch of work)."""
    t0 = time.perf_counter()
    report = SanitizeReport()
    found: Counter[str] = Counter()
    with db.begin() as conn:
        rows = to_sanitize(conn, list(ids) if ids is not None else None)
    if progress:
        progress.set_total(len(rows))
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        subjects = sanitizer.redact_many([r.subject or "" for r in chunk])
        bodies = sanitizer.redact_many([r.body or "" for r in chunk])
        updates = []
        for row, subj, body in zip(chunk, subjects, bodies, strict=True):
            counts = Counter(subj.counts) + Counter(body.counts)
            found.update(counts)
            report.with_pii += int(bool(counts))
            updates.append(RedactedText(id=row.id, subject=subj.text, body=body.text,
                                    clean_hash=clean_hash(subj.text, body.text),
                                    sanitized_for=row.content_hash, pii_found=dict(counts)))
        with db.begin() as conn:
            save_redacted(conn, updates)
        report.sanitized += len(chunk)
        if progress:
            progress(len(chunk))
    report.found = dict(found)
    report.seconds = round(time.perf_counter() - t0, 2)
    return report

"""Validate what ingest and sanitize produced before anything is indexed or trained on.

Tickets redacted and checked for near-duplicates but not yet validated are checked as one
batch (the raw and the clean suite); only a passing batch is marked ``checked_for`` and so
becomes visible to the index and to training. A failing batch stays out and the error
names the Data Docs page.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd
import sqlalchemy as sa

from cca.settings import Settings
from cca.store import Database

_PENDING = sa.text(
    """
    SELECT t.id, t.source, t.subject, t.body, t.created_at, t.clean_subject, t.clean_body,
           t.clean_hash, l.label
    FROM tickets t LEFT JOIN ticket_labels l ON l.ticket_id = t.id AND l.validated
    WHERE t.sanitized_for = t.content_hash AND t.dedup_for = t.clean_hash
      AND t.checked_for IS DISTINCT FROM t.clean_hash
    ORDER BY t.created_at, t.id
    """
)


@dataclass
class ValidateReport:
    checked: int
    raw_suite: dict | None
    clean_suite: dict | None

    def as_dict(self) -> dict:
        return asdict(self)


def _summary(report: object) -> dict:
    return {"suite": report.suite, "success": report.success, "rows": report.evaluated,
            "seconds": round(report.seconds, 2), "data_docs": str(report.data_docs)}


def validate_pending(db: Database, settings: Settings) -> ValidateReport:
    """Raises ``ValidationFailed`` (naming the Data Docs page) and marks nothing on failure."""
    from pipelines.validate import validate_clean, validate_raw

    with db.begin() as conn:
        rows = conn.execute(_PENDING).mappings().all()
    if not rows:
        return ValidateReport(checked=0, raw_suite=None, clean_suite=None)
    df = pd.DataFrame([dict(r) for r in rows])
    raw = df[~df["body"].eq("") | df["subject"].ne("")]  # raw text may already be purged
    raw_report = validate_raw(
        raw[["id", "source", "subject", "body", "created_at", "label"]].reset_index(drop=True),
        settings) if len(raw) else None
    clean_report = validate_clean(df[["id", "clean_subject", "clean_body", "label"]], settings)
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE tickets SET checked_for = :h WHERE id = :id"),
                     [{"id": r["id"], "h": r["clean_hash"]} for r in rows])
    return ValidateReport(checked=len(rows),
                          raw_suite=_summary(raw_report) if raw_report else None,
                          clean_suite=_summary(clean_report))

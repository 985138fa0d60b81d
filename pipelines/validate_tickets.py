"""Validate what ingest and sanitize produced before anything is indexed or trained on.

Tickets redacted and checked for near-duplicates but not yet validated are checked as one
batch (the raw and the clean suite); only tickets that pass are marked ``checked_for`` and
so become visible to the index and to training. Tickets that break a row-level expectation
(empty text, PII left, a date in the future…) go to quarantine with the expectations they
broke and the Data Docs page, and the rest go on; a failure that is not about particular
rows stops the whole batch. A quarantined ticket is checked again once its text, record or
label changes, and its quarantine row is released when it passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import pandas as pd

from cca.settings import Settings
from cca.store import Database
from cca.store.lifecycle_repo import mark_checked, to_validate
from cca.store.quarantine import QuarantineItem, quarantine, release
from pipelines.validate import (
    ValidationFailed,
    ValidationReport,
    validate_clean,
    validate_raw,
)


@dataclass
class ValidateReport:
    checked: int
    raw_suite: dict | None
    clean_suite: dict | None
    quarantined: int = 0
    refused_pages: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _summary(report: ValidationReport) -> dict:
    return {"suite": report.suite, "success": report.success, "rows": report.evaluated,
            "seconds": round(report.seconds, 2), "data_docs": str(report.data_docs)}


def _run(check: Callable[[pd.DataFrame, Settings], ValidationReport], frame: pd.DataFrame,
         settings: Settings, refused: dict[str, tuple[ValidationReport, list[str]]]
         ) -> ValidationReport | None:
    """Run a suite; the rows it names are set aside and it runs again on the rest, until it
    passes. Each round removes at least one row, so this ends; a failure not tied to rows
    is raised."""
    while True:
        frame = frame[~frame["id"].isin(list(refused))].reset_index(drop=True)
        if frame.empty:
            return None
        try:
            return check(frame, settings)
        except ValidationFailed as exc:
            report = exc.report
            if not (report.row_level and report.broken_by):
                raise
            for tid, broken in report.broken_by.items():
                refused[tid] = (report, broken)


def validate_pending(db: Database, settings: Settings) -> ValidateReport:
    """Raises ``ValidationFailed`` (naming the Data Docs page) for a batch-level failure."""
    with db.begin() as conn:
        rows = to_validate(conn)
    if not rows:
        return ValidateReport(checked=0, raw_suite=None, clean_suite=None)
    df = pd.DataFrame([asdict(r) for r in rows])
    refused: dict[str, tuple[ValidationReport, list[str]]] = {}
    raw = df[df["body"].ne("") | df["subject"].ne("")]  # raw text may already be purged
    raw_report = _run(validate_raw, raw[["id", "source", "subject", "body", "created_at",
                                         "label"]], settings, refused) if len(raw) else None
    clean_report = _run(validate_clean, df[["id", "clean_subject", "clean_body", "label"]],
                        settings, refused)
    sources = dict(zip(df["id"], df["source"], strict=True))
    items = [QuarantineItem(stage="validate", source=str(sources[tid]), location=f"ticket:{tid}",
                            reason=f"{report.suite}: {', '.join(broken)}; "
                                   f"Data Docs: {report.data_docs}",
                            payload={"ticket_id": tid})
             for tid, (report, broken) in refused.items()]
    passed = [r.id for r in rows if r.id not in refused]
    with db.begin() as conn:
        mark_checked(conn, [(r.id, r.clean_hash if r.id not in refused
                             else f"refused:{r.clean_hash}") for r in rows])
        quarantine(conn, items)
        if passed:  # an earlier refusal of a ticket that now passes is resolved
            release(conn, "validate", [f"ticket:{tid}" for tid in passed])
    return ValidateReport(
        checked=len(passed),
        raw_suite=_summary(raw_report) if raw_report else None,
        clean_suite=_summary(clean_report) if clean_report else None,
        quarantined=len(refused),
        refused_pages=sorted({str(r.data_docs) for r, _ in refused.values()}),
    )

"""Retention: raw text goes after 90 days, embeddings after 2 years; the audit log stays.

Purging raw text keeps the redacted text, labels and hashes, so training, the index and
near-duplicate checks still work on old tickets while no raw customer text outlives the
window. A ticket not yet redacted keeps its raw text until it is (it would be lost
otherwise). Quarantined payloads and processed inbox files hold raw text too and follow
the same rule. The index skips tickets older than the embedding window, so what is deleted
here is not embedded again.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from cca.settings import Settings
from cca.store import Database, intake_repo
from cca.store.lifecycle_repo import purge_raw_text
from cca.store.quarantine import purge_payloads
from cca.store.vectors import delete_created_before


@dataclass
class RetentionReport:
    raw_text_purged: int
    quarantine_payloads_purged: int
    intake_events_purged: int
    embeddings_deleted: int
    inbox_folders_deleted: int
    raw_cutoff: str
    embedding_cutoff: str

    def as_dict(self) -> dict:
        return asdict(self)


def _purge_inbox(settings: Settings, cutoff: datetime) -> int:
    """Processed and failed inbox files are raw text too: their day folders go at the cutoff."""
    deleted = 0
    for kind in ("processed", "failed"):
        for folder in sorted((settings.inbox / kind).glob("????-??-??")):
            try:
                day = datetime.strptime(folder.name, "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError:
                continue
            if folder.is_dir() and day + timedelta(days=1) <= cutoff:
                shutil.rmtree(folder)
                deleted += 1
    return deleted


def purge_expired(db: Database, settings: Settings, now: datetime | None = None
                  ) -> RetentionReport:
    now = now or datetime.now(UTC)
    raw_cutoff = now - timedelta(days=settings.retention_raw_days)
    emb_cutoff = now - timedelta(days=settings.retention_embedding_days)
    with db.begin() as conn:
        purged = purge_raw_text(conn, raw_cutoff, now)
        payloads = purge_payloads(conn, raw_cutoff)
        events = intake_repo.purge_text(conn, raw_cutoff)
        deleted = delete_created_before(conn, emb_cutoff)
    return RetentionReport(raw_text_purged=purged, quarantine_payloads_purged=payloads,
                           intake_events_purged=events,
                           embeddings_deleted=deleted,
                           inbox_folders_deleted=_purge_inbox(settings, raw_cutoff),
                           raw_cutoff=raw_cutoff.isoformat(),
                           embedding_cutoff=emb_cutoff.isoformat())

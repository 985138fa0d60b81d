"""``cca ingest``, ``prepare``, ``purge``, ``quarantine``: the DAG steps by hand."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cli.common import console, database, progress_bar, settings, stdout

if TYPE_CHECKING:
    from cca.store import Database


def do_prepare(db: Database) -> dict:
    """``lifecycle.prepare`` (what the prepare_tickets DAG runs), with bars and a summary."""
    # deferred: the lifecycle loads the embedders, spaCy, Great Expectations and datasketch
    from pipelines import lifecycle

    report = lifecycle.prepare(settings(), db, progress_bar)
    san, dup, val = report["sanitize"], report["dedup"], report["validate"]
    console.print(f"sanitize: {san['sanitized']} tickets redacted in {san['seconds']}s, "
                  f"{san['with_pii']} had PII {san['found'] or ''}")
    console.print(f"dedup: {dup['checked']} checked, {dup['duplicates']} near-duplicates linked "
                  f"to their original ({dup['label_conflicts']} with another label)"
                  + (", Redis index rebuilt from PostgreSQL" if dup["rebuilt_index"] else ""))
    if val["checked"] or val["quarantined"]:
        pages = val["refused_pages"] or [val["clean_suite"]["data_docs"]]
        console.print(f"validate: {val['checked']} tickets passed, {val['quarantined']} "
                      f"quarantined (Data Docs: {pages[0]})")
    else:
        console.print("validate: nothing new to validate")
    for m in report["index"]["models"]:
        console.print(f"index {m['model_id']}: embedded {m['embedded']} new or changed of "
                      f"{m['considered']} ({m['per_second']:.0f}/s), {m['relabelled']} "
                      f"relabelled, {m['dropped_duplicates']} duplicates dropped")
    return report


def prepare_cmd() -> None:
    """Redact PII, link near-duplicates, validate, then embed and index what is new."""
    with database() as db:
        do_prepare(db)


def ingest_cmd() -> None:
    """Take the files in the inbox folder and fetch from configured ticketing systems."""
    # deferred: the lifecycle loads the embedders, spaCy, Great Expectations and datasketch
    from pipelines import lifecycle

    s = settings()
    with database() as db:
        inbox = lifecycle.ingest_inbox(s, db)
        console.print(f"inbox {s.inbox}: {inbox['files']} files, {inbox['tickets_new']} new "
                      f"tickets, {inbox['quarantined']} quarantined, {inbox['failed_files']} "
                      f"unreadable (moved to failed/)")
        for result in lifecycle.ingest_connectors(s, db)["connectors"]:
            console.print(f"{result['connector']}: {result['new']} new, {result['updated']} "
                          f"updated, {result['quarantined']} quarantined")


def purge_cmd() -> None:
    """Retention: purge raw text past CCA_RETENTION_RAW_DAYS, embeddings past 2 years."""
    # deferred: the lifecycle loads the embedders, spaCy, Great Expectations and datasketch
    from pipelines import lifecycle

    with database() as db:
        r = lifecycle.purge_expired(settings(), db)
    console.print(f"raw text purged on {r['raw_text_purged']} tickets (before "
                  f"{r['raw_cutoff'][:10]}), {r['embeddings_deleted']} embeddings deleted, "
                  f"{r['quarantine_payloads_purged']} quarantine payloads and "
                  f"{r['intake_events_purged']} webhook events cleared")


def quarantine_cmd(
    limit: Annotated[int, typer.Option(min=1, help="How many of the newest rows to list.")] = 20,
    stage: Annotated[str | None, typer.Option(help="Only this stage (ingest, import…).")] = None,
) -> None:
    """What was refused and why: counts per stage and the newest rows (payloads not shown)."""
    # deferred: SQLAlchemy and psycopg load only for commands that use the store
    from cca.store.quarantine import open_counts, recent

    with database() as db, db.begin() as conn:
        counts, rows = open_counts(conn), recent(conn, limit, stage)
    console.print("open quarantine: " + (", ".join(f"{k} {v}" for k, v in counts.items())
                                         or "empty"))
    if rows:
        table = Table()
        for col in ("id", "when", "stage", "source", "location", "reason"):
            table.add_column(col)
        for r in rows:
            table.add_row(str(r.id), f"{r.quarantined_at:%Y-%m-%d %H:%M}", r.stage, r.source,
                          r.location, r.reason)
        stdout.print(table)

"""The data lifecycle as plain functions: what each Airflow task and the main job call.

Each function opens what it needs from the settings, does one step, logs one line and
returns a small JSON-serialisable summary (an Airflow task passes it on as XCom). Nothing
here imports Airflow, so every step runs and is tested on its own. Each function imports its
step's module itself: an Airflow task is a process of its own, and the hourly ingest should not
load the embedders, datasketch and pandas that other steps need.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from cca.departments import load_department_map
from cca.errors import CCAError, StateError
from cca.settings import Settings
from cca.store import Database, exclusive, use_database
from pipelines.progress import Progress

log = logging.getLogger("cca.lifecycle")
Bar = Callable[[str], AbstractContextManager[Progress]]


@contextmanager
def _quiet_bar(description: str) -> Iterator[Any]:
    """Without a terminal (Airflow, tests) progress goes to the log once at the end."""
    done = [0]

    def advance(n: int) -> None:
        done[0] += n

    advance.set_total = lambda n: None  # type: ignore[attr-defined]
    yield advance
    log.info("%s: %d done", description, done[0])


def ingest_inbox(settings: Settings | None = None, db: Database | None = None) -> dict:
    # deferred: only this step's dependencies (see the module docstring)
    from pipelines import ingest

    with use_database(settings, db) as (s, conn), exclusive(conn, "ingest-inbox"):
        report = ingest.ingest_inbox(conn, s, load_department_map(s.department_map)).as_dict()
    log.info("ingest inbox: %s files, %s new tickets, %s quarantined", report["files"],
             report["tickets_new"], report["quarantined"])
    return report


def ingest_connectors(settings: Settings | None = None, db: Database | None = None) -> dict:
    # deferred: only this step's dependencies (see the module docstring)
    from pipelines import ingest
    from pipelines.connectors import connectors_from_settings

    results, failed = [], []
    with use_database(settings, db) as (s, conn), exclusive(conn, "ingest-connectors"):
        departments = load_department_map(s.department_map)
        for connector in connectors_from_settings(s):
            try:  # one system down must not keep the others from being fetched
                results.append(ingest.ingest_from_connector(
                    conn, connector, departments, write_back=s.writeback))
            except CCAError as exc:
                log.error("ingest %s: %s", connector.name, exc)
                failed.append(f"{connector.name}: {exc}")
    log.info("ingest connectors: %s", results or "none configured")
    if failed:
        raise StateError(f"{len(failed)} connector(s) failed ({'; '.join(failed)}); "
                         f"{len(results)} others ingested")
    return {"connectors": results}


def sanitize_pending(settings: Settings | None = None, db: Database | None = None,
                     bar: Bar = _quiet_bar) -> dict:
    # deferred: only this step's dependencies (see the module docstring)
    from pipelines import sanitize_tickets
    from redaction import Sanitizer

    with (use_database(settings, db) as (s, conn), exclusive(conn, "sanitize"),
          bar("redacting PII") as advance):
        report = sanitize_tickets.sanitize_pending(
            conn, Sanitizer.from_settings(s), progress=advance
        ).as_dict()
    log.info("sanitize: %s tickets redacted (%s with PII: %s)", report["sanitized"],
             report["with_pii"], report["found"])
    return report


def dedup_pending(settings: Settings | None = None, db: Database | None = None,
                  bar: Bar = _quiet_bar) -> dict:
    # deferred: only this step's dependencies (see the module docstring)
    from pipelines import dedup

    with (use_database(settings, db) as (s, conn), exclusive(conn, "dedup"),
          bar("near-duplicates") as advance):
        report = dedup.dedup_pending(conn, s, progress=advance).as_dict()
    log.info("dedup: %s checked, %s near-duplicates linked (%s with another label)",
             report["checked"], report["duplicates"], report["label_conflicts"])
    return report


def validate_pending(settings: Settings | None = None, db: Database | None = None) -> dict:
    # deferred: only this step's dependencies (see the module docstring)
    from pipelines import validate_tickets

    with use_database(settings, db) as (s, conn), exclusive(conn, "validate"):
        report = validate_tickets.validate_pending(conn, s).as_dict()
    log.info("validate: %s tickets passed the raw and clean suites", report["checked"])
    return report


def index_pending(settings: Settings | None = None, db: Database | None = None,
                  bar: Bar = _quiet_bar) -> dict:
    """The cache's vectors (searchable), then the deep model's (kept for training)."""
    # deferred: only this step's dependencies (see the module docstring)
    from cca.embeddings import get_deep_embedder, get_embedder
    from pipelines import index_tickets

    out = []
    with use_database(settings, db) as (s, conn), exclusive(conn, "index"):
        since = datetime.now(UTC) - timedelta(days=s.retention_embedding_days)
        for embedder, hnsw in ((get_embedder(s), True), (get_deep_embedder(s), False)):
            if embedder is None:
                continue
            with bar(f"embedding ({embedder.model_id})") as advance:
                r = index_tickets.index_labelled_tickets(
                    conn, embedder, hnsw=hnsw, since=since, progress=advance)
            out.append({"model_id": r.model_id, "considered": r.considered,
                        "embedded": r.embedded, "relabelled": r.relabelled,
                        "dropped_duplicates": r.dropped_duplicates, "seconds": r.seconds,
                        "per_second": round(r.per_second, 1)})
            log.info("index %s: %s embedded of %s (%.0f/s)", r.model_id, r.embedded,
                     r.considered, r.per_second)
    return {"models": out}


def prepare(settings: Settings | None = None, db: Database | None = None,
            bar: Bar = _quiet_bar) -> dict:
    """sanitize -> dedup -> validate -> index, as the prepare_tickets DAG runs them."""
    with use_database(settings, db) as (s, conn):
        return {
            "sanitize": sanitize_pending(s, conn, bar),
            "dedup": dedup_pending(s, conn, bar),
            "validate": validate_pending(s, conn),
            "index": index_pending(s, conn, bar),
        }


def purge_expired(settings: Settings | None = None, db: Database | None = None) -> dict:
    # deferred: only this step's dependencies (see the module docstring)
    from pipelines import retention

    with use_database(settings, db) as (s, conn), exclusive(conn, "retention"):
        report = retention.purge_expired(conn, s).as_dict()
    log.info("retention: raw text purged on %s tickets, %s embeddings deleted",
             report["raw_text_purged"], report["embeddings_deleted"])
    return report

"""Prepare new tickets: sanitize -> dedup -> validate -> embed/index, when raw tickets land."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import chain, dag, task
from assets import CLEAN_TICKETS, RAW_TICKETS


@dag(
    schedule=[RAW_TICKETS],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    tags=["cca", "lifecycle", "prepare"],
)
def prepare_tickets() -> None:
    """
    ### Prepare tickets
    Runs whenever `ingest_tickets` updates `cca://tickets/raw`; each step handles only the
    tickets still pending for it, so a run with nothing new is cheap.

    1. **sanitize**: redact PII; the redacted text is what is embedded, indexed and logged.
    2. **dedup**: link near-duplicates (MinHash LSH, index in Redis) to their original.
    3. **validate**: the Great Expectations suites on raw and clean text; a failure stops
       the run before anything is indexed.
    4. **index**: embed and upsert into pgvector, then update `cca://tickets/clean`.

    Task logic lives in `pipelines/lifecycle.py`.
    """

    @task
    def sanitize() -> dict:
        """Redact PII in tickets whose text changed since they were last redacted."""
        from pipelines.lifecycle import sanitize_pending

        return sanitize_pending()

    @task
    def dedup() -> dict:
        """Link near-duplicates of earlier tickets to their original."""
        from pipelines.lifecycle import dedup_pending

        return dedup_pending()

    @task
    def validate() -> dict:
        """Check the pending tickets against the validation suites; raises on failure."""
        from pipelines.lifecycle import validate_pending

        return validate_pending()

    @task(outlets=[CLEAN_TICKETS])
    def index() -> dict:
        """Embed and index the labelled tickets that are new or changed."""
        from pipelines.lifecycle import index_pending

        return index_pending()

    chain(sanitize(), dedup(), validate(), index())


prepare_tickets()

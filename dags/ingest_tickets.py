"""Hourly ingest: files dropped in the inbox, and tickets from ServiceNow, Zendesk and Jira."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task
from assets import RAW_TICKETS


@dag(
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    tags=["cca", "lifecycle", "ingest"],
)
def ingest_tickets() -> None:
    """
    ### Ingest tickets
    Two independent sources, each updating the `cca://tickets/raw` asset, which schedules
    `prepare_tickets`:

    - **inbox**: every `.csv/.tsv/.jsonl` file dropped in `CCA_HOME/inbox` (columns from a
      `<file>.columns.yaml` sidecar or canonical names); each file moves to `processed/` or
      `failed/`, bad records go to the quarantine table.
    - **connectors**: ServiceNow, Zendesk and Jira Service Management, each from its stored
      cursor; systems not configured (`CCA_SERVICENOW_URL`, ...) are skipped. With
      `CCA_WRITEBACK=true`, tickets new to the store (not those of a system's first,
      backfilling pull) are queued in the same commit for routing and write-back, which
      the service's intake workers (or `cca worker`) do, exactly as for a webhook.

    Task logic lives in `pipelines/lifecycle.py`.
    """

    @task(outlets=[RAW_TICKETS])
    def ingest_inbox() -> dict:
        """Store the tickets of every file in the inbox."""
        from pipelines.lifecycle import ingest_inbox

        return ingest_inbox()

    @task(outlets=[RAW_TICKETS])
    def ingest_connectors() -> dict:
        """Fetch new and changed tickets from each configured ticketing system."""
        from pipelines.lifecycle import ingest_connectors

        return ingest_connectors()

    ingest_inbox()
    ingest_connectors()


ingest_tickets()

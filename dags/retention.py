"""Daily retention: purge raw text after 90 days and embeddings after 2 years; audit stays."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task


@dag(
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    tags=["cca", "lifecycle", "retention"],
)
def retention() -> None:
    """
    ### Retention
    Blanks the raw subject, body and customer reference of tickets older than
    `CCA_RETENTION_RAW_DAYS` (90) and quarantined payloads of the same age, and deletes
    embeddings older than `CCA_RETENTION_EMBEDDING_DAYS` (730). Redacted text, labels,
    hashes, the `decisions` audit log and `model_events` are kept.

    Task logic lives in `pipelines/lifecycle.py`.
    """

    @task
    def purge_expired() -> dict:
        """Purge what is past its retention period."""
        from pipelines.lifecycle import purge_expired

        return purge_expired()

    purge_expired()


retention()

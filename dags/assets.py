"""The assets the DAGs hand to each other (shared so producer and consumer name the same URI).

Not a DAG: the other files in this folder import it, as the dag-processor and the task runner
put the DAG folder on ``sys.path``.
"""

from __future__ import annotations

from airflow.sdk import Asset

RAW_TICKETS = Asset("cca://tickets/raw")
"""Tickets stored as received (inbox files, connectors); the raw text is still there."""

CLEAN_TICKETS = Asset("cca://tickets/clean")
"""Tickets redacted, de-duplicated, validated, embedded and indexed."""

CHAMPION_MODEL = Asset("cca://models/champion")
"""The weekly promotion decision (the registry's ``@champion`` alias may have moved)."""

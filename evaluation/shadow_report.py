"""How the ``@challenger`` did in shadow mode: agreement with the champion and, on tickets a
person labelled since (feedback), each model's accuracy. Input for a promotion decision."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from cca.store import Database
from cca.store.shadow_repo import shadow_pairs


def shadow_report(db: Database, days: int = 30) -> dict[str, Any]:
    """One row per (champion, challenger) pair seen in the window; accuracies are None
    until some of their tickets have feedback (``cca.store.shadow_repo.shadow_pairs`` says
    how a review answer counts)."""
    with db.begin() as conn:
        pairs = shadow_pairs(conn, days)
    rows = [{key: round(value, 4) if isinstance(value, float) else value  # the rates
             for key, value in asdict(pair).items()} for pair in pairs]
    return {"days": days, "compared": sum(r["compared"] for r in rows), "pairs": rows}

"""How the ``@challenger`` did in shadow mode: agreement with the champion and, on tickets a
person labelled since (feedback), each model's accuracy. Input for a promotion decision."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from cca.store import Database

_PAIRS = sa.text(
    """
    SELECT s.champion_version, s.challenger_version,
           count(*) AS compared,
           avg((s.champion_label IS NOT DISTINCT FROM s.challenger_label)::int) AS agreement,
           count(l.label) AS with_feedback,
           avg((s.champion_label = l.label)::int) FILTER (WHERE l.label IS NOT NULL)
               AS champion_accuracy,
           avg((s.challenger_label = l.label)::int) FILTER (WHERE l.label IS NOT NULL)
               AS challenger_accuracy,
           avg((s.champion_stage = 'review')::int) AS champion_review_rate,
           avg((s.challenger_stage = 'review')::int) AS challenger_review_rate,
           avg(s.challenger_ms) AS challenger_ms_mean
    FROM shadow_decisions s
    LEFT JOIN ticket_labels l ON l.ticket_id = s.ticket_id AND l.validated
                              AND l.origin = 'feedback'
    WHERE s.decided_at >= now() - make_interval(days => :days)
    GROUP BY s.champion_version, s.challenger_version
    ORDER BY max(s.decided_at) DESC
    """
)


_RATES = ("agreement", "champion_accuracy", "challenger_accuracy", "champion_review_rate",
          "challenger_review_rate", "challenger_ms_mean")


def shadow_report(db: Database, days: int = 30) -> dict[str, Any]:
    """One row per (champion, challenger) pair seen in the window; accuracies are None
    until some of their tickets have feedback. A review answer counts as wrong."""
    with db.begin() as conn:
        rows = [dict(r) for r in conn.execute(_PAIRS, {"days": days}).mappings()]
    for row in rows:  # PostgreSQL's avg() gives Decimal
        for key in _RATES:
            row[key] = None if row[key] is None else round(float(row[key]), 4)
    return {"days": days, "compared": sum(r["compared"] for r in rows), "pairs": rows}

"""Reading the challenger's shadow runs (written by ``cca.store.served``) back, per model pair."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection


@dataclass(frozen=True)
class ShadowPair:
    """One (champion, challenger) pair over the window. Rates are shares in [0, 1]; the
    accuracies are None until some of the pair's tickets have a feedback label."""

    champion_version: str
    challenger_version: str
    compared: int
    agreement: float | None
    with_feedback: int
    champion_accuracy: float | None
    challenger_accuracy: float | None
    champion_review_rate: float | None
    challenger_review_rate: float | None
    challenger_ms_mean: float | None


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
_AVERAGES = ("agreement", "champion_accuracy", "challenger_accuracy", "champion_review_rate",
             "challenger_review_rate", "challenger_ms_mean")  # avg() columns


def shadow_pairs(conn: Connection, days: int) -> list[ShadowPair]:
    """Each pair seen in the last ``days``, the most recently compared first.

    Accuracy is over tickets with a feedback label; a model's review answer (no label) is
    left out of its accuracy, and counted in its review rate."""
    out = []
    for row in conn.execute(_PAIRS, {"days": days}).mappings():
        values = dict(row)
        for key in _AVERAGES:  # PostgreSQL's avg() gives Decimal
            values[key] = None if values[key] is None else float(values[key])
        out.append(ShadowPair(**values))
    return out

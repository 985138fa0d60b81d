"""The append-only decision log: which stage answered, how sure, with which model, at what cost.

The table refuses UPDATE, DELETE and TRUNCATE in the database itself (migration 0001).
Only a hash of the ticket text is kept here, never the text.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cca.tickets import Decision, Ticket


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def decision_details(d: Decision) -> dict[str, Any]:
    """The ``details`` column of a decision's audit row: ids, labels, timings and reasons,
    never ticket text (a suggestion is a label)."""
    return {
        "rule_id": d.rule_id,
        "sla_breach": d.sla_breach,
        "neighbours": [n.model_dump() for n in d.neighbours],
        "top_classes": d.top_classes,
        "timings_ms": d.timings_ms,
        "reason": d.reason,
        "suggestion": d.suggestion,
        "suggestion_confidence": d.suggestion_confidence,
    }


def append_decisions(conn: Connection, pairs: list[tuple[Ticket, Decision]]) -> None:
    if not pairs:
        return
    conn.execute(
        sa.text(
            """
            INSERT INTO decisions (ticket_id, text_hash, stage, label, department, urgency,
                                   confidence, model_version, cost_usd, latency_ms, details)
            VALUES (:ticket_id, :text_hash, :stage, :label, :department, :urgency,
                    :confidence, :model_version, :cost_usd, :latency_ms, CAST(:details AS jsonb))
            """
        ),
        [
            {
                "ticket_id": d.ticket_id,
                "text_hash": d.text_hash or text_hash(t.text),
                "stage": d.stage,
                "label": d.label,
                "department": d.department,
                "urgency": d.urgency,
                "confidence": d.confidence,
                "model_version": d.model_version,
                "cost_usd": d.cost_usd,
                "latency_ms": sum(d.timings_ms.values()),
                "details": json.dumps(decision_details(d)),
            }
            for t, d in pairs
        ],
    )


@dataclass(frozen=True)
class LoggedDecision:
    stage: str
    label: str | None  # None: sent to review
    model_version: str
    details: dict[str, Any]  # rule, neighbours, top classes, timings, reason, suggestion


def last_decision(conn: Connection, ticket_id: str) -> LoggedDecision | None:
    """The newest decision logged for the ticket, if any."""
    row = conn.execute(
        sa.text(
            "SELECT stage, label, model_version, details FROM decisions "
            "WHERE ticket_id = :t ORDER BY decided_at DESC, id DESC LIMIT 1"
        ),
        {"t": ticket_id},
    ).mappings().first()
    return LoggedDecision(**row) if row else None

"""What the HTTP service writes: the tickets it accepted, their audited decisions, the replay
record for retried webhooks, shadow runs, and the erasure of a customer's data.

Records reach this module through the service's durable spool, so every write here must be
idempotent: a record delivered twice (after a crash between delivery and cursor update)
changes nothing the second time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cca.store import intake_repo
from cca.store.audit import decision_details, text_hash
from cca.store.tickets_repo import upsert_tickets
from cca.tickets import Decision, Ticket

_DECISION = sa.text(
    """
    INSERT INTO decisions (record_id, ticket_id, decided_at, text_hash, stage, label, department,
                           urgency, confidence, model_version, cost_usd, latency_ms, details,
                           caller, request_id, endpoint)
    VALUES (CAST(:record_id AS uuid), :ticket_id, :decided_at, :text_hash, :stage, :label,
            :department, :urgency, :confidence, :model_version, :cost_usd, :latency_ms,
            CAST(:details AS jsonb), :caller, :request_id, :endpoint)
    ON CONFLICT (record_id) DO NOTHING
    """
)

_SERVED = sa.text(
    """
    INSERT INTO served_decisions (ticket_id, request_hash, decision, served_at)
    VALUES (:ticket_id, :request_hash, CAST(:decision AS jsonb), :served_at)
    ON CONFLICT (ticket_id) DO UPDATE SET request_hash = EXCLUDED.request_hash,
        decision = EXCLUDED.decision, served_at = EXCLUDED.served_at
    WHERE served_decisions.served_at <= EXCLUDED.served_at
    """
)

_SHADOW = sa.text(
    """
    INSERT INTO shadow_decisions (record_id, ticket_id, decided_at, champion_version,
        challenger_version, champion_stage, challenger_stage, champion_label, challenger_label,
        champion_conf, challenger_conf, challenger_ms)
    VALUES (CAST(:record_id AS uuid), :ticket_id, :decided_at, :champion_version,
        :challenger_version, :champion_stage, :challenger_stage, :champion_label,
        :challenger_label, :champion_conf, :challenger_conf, :challenger_ms)
    ON CONFLICT (record_id) DO NOTHING
    """
)


_EXPLANATION = sa.text(
    """
    INSERT INTO decision_explanations (record_id, ticket_id, text_hash, label, explanation,
        model, prompt_tokens, completion_tokens, cost_usd, created_at)
    VALUES (CAST(:record_id AS uuid), :ticket_id, :text_hash, :label, :explanation, :model,
        :prompt_tokens, :completion_tokens, :cost_usd, :at)
    ON CONFLICT (record_id) DO NOTHING
    """
)


def explanations(conn: Connection, ticket_id: str, limit: int = 5) -> list[dict[str, Any]]:
    """The newest LLM explanations of a ticket's decisions."""
    rows = conn.execute(sa.text(
        "SELECT ticket_id, text_hash, label, explanation, model, prompt_tokens, "
        "completion_tokens, cost_usd, created_at FROM decision_explanations "
        "WHERE ticket_id = :t ORDER BY created_at DESC LIMIT :n"), {"t": ticket_id, "n": limit})
    return [dict(r._mapping) for r in rows]


def decision_row(record: dict[str, Any]) -> dict[str, Any]:
    """The audit row of one served decision; only a hash of the redacted text, never text."""
    d = Decision.model_validate(record["decision"])
    return {
        "record_id": record["record_id"], "ticket_id": d.ticket_id, "decided_at": record["at"],
        "text_hash": d.text_hash or text_hash(record.get("text_for_hash", "")),
        "stage": d.stage, "label": d.label, "department": d.department, "urgency": d.urgency,
        "confidence": d.confidence, "model_version": d.model_version, "cost_usd": d.cost_usd,
        "latency_ms": round(sum(d.timings_ms.values()), 3),
        "details": json.dumps(decision_details(d)),
        "caller": record.get("caller"), "request_id": record.get("request_id"),
        "endpoint": record.get("endpoint"),
    }


def record_served(conn: Connection, records: Sequence[dict[str, Any]]) -> None:
    """Store a batch of spooled records in one transaction (the caller's).

    ``decision`` records carry the ticket as received (its explicitly given fields), the
    decision and the request hash; ``shadow`` records carry a challenger comparison.
    """
    decisions = [r for r in records if r["kind"] == "decision"]
    shadows = [r for r in records if r["kind"] == "shadow"]
    explanations = [r for r in records if r["kind"] == "explanation"]
    if decisions:
        # The last version of a ticket in the batch wins, as it did on the request path.
        latest: dict[str, Ticket] = {}
        for r in decisions:
            latest[r["ticket"]["id"]] = Ticket.model_validate(r["ticket"])
        upsert_tickets(conn, list(latest.values()), origin="api")
        conn.execute(_DECISION, [decision_row(r) for r in decisions])
        conn.execute(_SERVED, [
            {"ticket_id": r["ticket"]["id"], "request_hash": r["request_hash"],
             "decision": json.dumps(r["decision"]), "served_at": r["at"]}
            for r in decisions])
    if shadows:
        rows = _of_stored_tickets(conn, shadows)
        if rows:
            conn.execute(_SHADOW, [{**r, "decided_at": r.pop("at")} for r in rows])
    if explanations:
        rows = _of_stored_tickets(conn, explanations)
        if rows:
            conn.execute(_EXPLANATION, rows)


def _of_stored_tickets(conn: Connection, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records (without their ``kind``) whose ticket is stored: an erased ticket's late
    shadow run or explanation is dropped."""
    known = {row[0] for row in conn.execute(
        sa.text("SELECT id FROM tickets WHERE id = ANY(:ids)"),
        {"ids": [r["ticket_id"] for r in records]})}
    return [{k: v for k, v in r.items() if k != "kind"} for r in records
            if r["ticket_id"] in known]


def served_decisions(conn: Connection, items: Sequence[tuple[str, str]]) -> list[dict | None]:
    """For each (ticket id, request hash), the decision served for that id and content, if
    any (the idempotency fallback); one query for the whole batch."""
    if not items:
        return []
    # The driver's SQL: asked for every batch the service classifies (see vectors.nearest).
    rows = conn.exec_driver_sql(
        "SELECT ticket_id, request_hash, decision FROM served_decisions "
        "WHERE ticket_id = ANY(%(ids)s)", {"ids": list({t for t, _ in items})})
    found = {(t, h): d for t, h, d in rows}
    return [dict(found[key]) if key in found else None for key in items]


def customer_refs(conn: Connection, core: str) -> list[str]:
    """The distinct customer references that, stripped to ASCII letters and digits and
    upper-cased, read ``core`` or ``CUST`` + ``core``: the candidates for one customer, which
    the caller (the right to deletion) narrows to those whose canonical form is ``core``."""
    rows = conn.execute(sa.text(
        "SELECT customer_ref FROM tickets WHERE customer_ref IS NOT NULL "
        "AND upper(regexp_replace(customer_ref, '[^0-9A-Za-z]', '', 'g')) "
        "IN (:core, 'CUST' || :core) "
        "UNION SELECT customer_ref FROM intake_events WHERE customer_ref IS NOT NULL "
        "AND upper(regexp_replace(customer_ref, '[^0-9A-Za-z]', '', 'g')) "
        "IN (:core, 'CUST' || :core)"), {"core": core})
    return [ref for (ref,) in rows]


_ERASE_QUARANTINE = sa.text(
    "DELETE FROM quarantine q WHERE q.payload->>'id' = ANY(CAST(:ids AS text[])) "
    "OR q.payload->>'ticket_id' = ANY(CAST(:ids AS text[])) "
    # 'file.csv:12' / 'zendesk:zendesk-81' / 'ticket:<id>': the record's place and id
    "OR EXISTS (SELECT 1 FROM unnest(CAST(:ids AS text[])) i "
    "           WHERE right(q.location, length(i) + 1) = ':' || i) "
    "OR (:core <> '' AND jsonb_typeof(q.payload) = 'object' AND EXISTS ("
    "    SELECT 1 FROM jsonb_each_text(q.payload) e "
    "    WHERE upper(regexp_replace(e.value, '[^0-9A-Za-z]', '', 'g')) "
    "          IN (:core, 'CUST' || :core)))")


@dataclass
class Erasure:
    ticket_ids: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def erase_customer(conn: Connection, refs: Sequence[str], subject_hash: str,
                   actor: str, core: str = "") -> Erasure:
    """Delete every ticket of the customer and what hangs off it (labels, vectors, signatures,
    replay records, shadow runs cascade), then append the anonymised tombstone.

    The decision audit keeps its rows: they hold ticket ids and hashes, never text or the
    customer reference, so the audit stays whole and the person is no longer identifiable.
    ``core`` (the reference as ``canonical_customer`` spells it) also finds quarantined
    records that never became tickets.
    """
    ids = [r[0] for r in conn.execute(
        sa.text("SELECT id FROM tickets WHERE customer_ref = ANY(:refs) FOR UPDATE"),
        {"refs": list(refs)})]
    counts: dict[str, int] = {"tickets": len(ids)}
    if ids:
        for table, column in (("ticket_embeddings", "ticket_id"), ("ticket_labels", "ticket_id"),
                              ("ticket_minhash", "ticket_id"),
                              ("served_decisions", "ticket_id"),
                              ("shadow_decisions", "ticket_id"),
                              ("decision_explanations", "ticket_id")):
            counts[table] = conn.execute(
                sa.text(f"SELECT count(*) FROM {table} WHERE {column} = ANY(:ids)"),
                {"ids": ids}).scalar_one()
        conn.execute(sa.text("UPDATE tickets SET duplicate_of = NULL "
                             "WHERE duplicate_of = ANY(:ids)"), {"ids": ids})
        conn.execute(sa.text("DELETE FROM tickets WHERE id = ANY(:ids)"), {"ids": ids})
    # Quarantined records hold raw text too: copies of these tickets, and records of the
    # customer's that were refused before they became tickets.
    counts["quarantine"] = conn.execute(_ERASE_QUARANTINE, {"ids": ids, "core": core}).rowcount
    # Queued webhook events hold the customer's text too, and may not be tickets yet.
    counts["intake_events"] = intake_repo.erase(conn, list(refs), ids)
    conn.execute(
        sa.text("INSERT INTO erasures (subject_hash, actor, counts) "
                "VALUES (:h, :a, CAST(:c AS jsonb))"),
        {"h": subject_hash, "a": actor, "c": json.dumps(counts)})
    return Erasure(ticket_ids=ids, counts=counts)

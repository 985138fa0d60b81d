"""Validated labels flow back: stored, added to the vector cache, and scored against the cache.

This is the continuous-learning loop: a cache answer that a person confirms (or corrects)
moves that label's track record, which decides whether the cache may reuse it again.
"""

from __future__ import annotations

from cca.bundle import ModelBundle, load_bundle
from cca.embeddings import Embedder, get_deep_embedder, get_embedder
from cca.errors import InputError, UnknownTicket
from cca.settings import Settings
from cca.store import Database
from cca.store.audit import last_decision
from cca.store.tickets_repo import get_prepared_ticket, get_ticket, set_labels
from cca.store.vectors import VectorRow, record_feedback, upsert_vectors


def apply_feedback(settings: Settings, db: Database, ticket_id: str, label: str,
                   bundle: ModelBundle | None = None,
                   embedders: list[Embedder] | None = None) -> str:
    """``bundle`` and ``embedders``: the ones already loaded (the service's), else CURRENT's."""
    bundle = bundle or load_bundle(settings.models_dir)
    label = label.strip()
    if label not in bundle.info.labels:
        sample = ", ".join(bundle.info.labels[:5])
        raise InputError(
            f"unknown label {label!r}: not in the label set of model {bundle.info.version} "
            f"({len(bundle.info.labels)} labels, e.g. {sample})"
        )
    department = bundle.info.departments.get(label, label)
    with db.begin() as conn:
        if get_ticket(conn, ticket_id) is None:
            raise UnknownTicket(f"no ticket {ticket_id!r} in the store")
        set_labels(conn, {ticket_id: (label, department)}, origin="feedback")
        ticket = get_prepared_ticket(conn, ticket_id)  # with the new label taken into account
    if embedders is None:
        embedders = [e for e in (get_embedder(settings), get_deep_embedder(settings))
                     if e is not None]
    embedder = embedders[0]
    # Only a prepared ticket's redacted text may be embedded now; any other ticket gets its
    # label stored and reaches the index through the next prepare run.
    vectors = [e.embed([ticket.text]) for e in embedders] if ticket else []
    with db.begin() as conn:
        if ticket is not None:
            row = VectorRow(ticket_id=ticket.id, content_hash=ticket.content_hash(),
                            label=label, department=department, source=ticket.source,
                            validated=True, created_at=ticket.created_at)
            for e, vector in zip(embedders, vectors, strict=True):
                upsert_vectors(conn, e.model_id, [row], vector)
        last = last_decision(conn, ticket_id)
        verdict = "no earlier decision"
        if last is not None:
            if last.stage == "cache" and last.label:
                confirmed = last.label == label
                record_feedback(conn, embedder.model_id, last.label, confirmed)
                verdict = f"cache answer {'confirmed' if confirmed else 'corrected'}"
            else:
                verdict = f"earlier answer by {last.stage}: {last.label or 'review'}"
    indexed = "added to the index" if ticket else "indexed after the next `cca prepare`"
    return f"ticket {ticket_id} labelled {label} ({department}); {verdict}; {indexed}"

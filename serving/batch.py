"""The tickets of one cascade batch (``serving.batcher`` forms it), from job to answer.

``Engine.handle`` answers each ticket in one of four ways, the first that applies: its
decision made moments ago and not yet fsync'ed (a retry that reached this worker meanwhile),
the decision the idempotency store holds for the same id and content, a fresh classification,
or, for the same ticket twice in one batch, the answer of its first occurrence. One
``InBatch`` record per ticket carries what is known of it through those steps; the functions
here are the steps that need nothing but the records.
"""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from cascade.cascade import Work
from cca.tickets import Decision, Ticket
from serving.replay_lookup import Pair, Stored


@dataclass(frozen=True)
class Job:
    """One ticket of one request, with who asked and through which endpoint."""

    ticket: Ticket
    caller: str
    request_id: str
    endpoint: str


@dataclass(frozen=True)
class Served:
    """A decision; ``durable`` (when set) is done once its audit record is fsync'ed, which
    the answer must wait for (``serving.service``)."""

    decision: Decision
    replayed: bool
    durable: Future[None] | None = None


def audit_fsyncs(served: list[Served]) -> list[Future[None]]:
    """The distinct fsyncs these answers wait for (one per cascade batch, shared)."""
    return list({id(s.durable): s.durable for s in served if s.durable is not None}.values())


@dataclass(frozen=True)
class Pending:
    """A ticket waiting for the LLM: item ``index`` of what ``future`` returns."""

    future: Future[list[Served]]
    index: int
    replayed: bool = False


@dataclass(eq=False)
class InBatch:
    """One ticket on its way through ``Engine.handle``: the job, and what is known so far."""

    job: Job
    request_hash: str
    # Its decision made moments ago and not yet fsync'ed (so not yet in the idempotency store).
    unsynced: Served | None = None
    # The same ticket earlier in this batch, whose answer this one replays.
    repeat_of: InBatch | None = None
    # Its classification, when it is classified in this batch.
    work: Work | None = None
    answer: Served | Pending | None = None

    @property
    def pair(self) -> Pair:
        """What makes a replay: the same ticket id with the same content."""
        return (self.job.ticket.id, self.request_hash)

    def audit_record(self, at: str) -> dict[str, Any]:
        """The spooled audit record of its fresh decision."""
        decision = self.work.decision if self.work is not None else None
        assert decision is not None
        return {
            "kind": "decision", "record_id": str(uuid.uuid4()), "at": at,
            "ticket": self.job.ticket.model_dump(mode="json", exclude_unset=True),
            "request_hash": self.request_hash, "decision": decision.model_dump(mode="json"),
            "caller": self.job.caller, "request_id": self.job.request_id,
            "endpoint": self.job.endpoint}


def to_classify(batch: list[InBatch], stored: Stored | None) -> list[InBatch]:
    """The tickets the cascade must classify: those with no decision known yet (``stored``:
    the lookup's answer when it came first), each once. The same ticket twice in one batch is
    classified once: the second is marked a repeat of the first."""
    first: dict[Pair, InBatch] = {}
    todo: list[InBatch] = []
    known = stored or [None] * len(batch)
    for ticket, found in zip(batch, known, strict=True):
        if ticket.unsynced is not None or found is not None:
            continue
        if ticket.pair in first:
            ticket.repeat_of = first[ticket.pair]
        else:
            first[ticket.pair] = ticket
            todo.append(ticket)
    return todo


def replay_known(batch: list[InBatch], stored: Stored) -> None:
    """Answer the tickets whose decision is known: from the idempotency store, or (first)
    from the decisions not yet fsync'ed, whose answers wait for the same fsync."""
    for ticket, found in zip(batch, stored, strict=True):
        if found is not None:
            ticket.answer = Served(Decision.model_validate(found), True)
    for ticket in batch:
        if ticket.unsynced is not None:
            ticket.answer = Served(ticket.unsynced.decision, True, ticket.unsynced.durable)


def answer_repeats(batch: list[InBatch]) -> None:
    """A ticket repeated within the batch gets its first occurrence's answer, as a replay."""
    for ticket in batch:
        if ticket.answer is None:
            assert ticket.repeat_of is not None
            src = ticket.repeat_of.answer
            assert src is not None  # the first occurrence was classified or replayed
            ticket.answer = (Pending(src.future, src.index, True) if isinstance(src, Pending)
                             else Served(src.decision, True, src.durable))

"""The LLM stage over a batch: retrieval of few-shot texts, then concurrent calls.

A batch waits about one LLM round trip rather than one per ticket, and the few-shot texts of
every ticket's neighbours come from PostgreSQL in one query.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from cascade.llm_prompt import Example
from cascade.llm_stage import LLMAnswer, LLMStage
from cca.store import Database, StoreUnavailable
from cca.store.tickets_repo import redacted_texts
from cca.tickets import Neighbour, Ticket


class Asked(Protocol):
    """What the stage needs of a ticket in flight (``cascade.cascade.Work``)."""

    ticket: Ticket
    neighbours: list[Neighbour]
    ranked: list[str]
    timings: dict[str, float]


def _best(neighbours: Sequence[Neighbour]) -> list[Neighbour]:
    return sorted(neighbours, key=lambda n: -n.similarity)


def few_shot_texts(db: Database, todo: Sequence[Asked], k: int) -> dict[str, str]:
    """Redacted texts of the tickets' ``k`` nearest neighbours, by ticket id."""
    ids = [n.ticket_id for w in todo for n in _best(w.neighbours)[:k]]
    if not ids:
        return {}
    try:
        with db.begin() as conn:
            return redacted_texts(conn, ids)
    except StoreUnavailable:  # PostgreSQL down: the LLM goes without examples
        return {}


def ask_batch(llm: LLMStage, db: Database, todo: Sequence[Asked], labels: list[str], *,
              few_shot: int, max_concurrency: int, can_call: bool,
              descriptions: dict[str, str]) -> list[LLMAnswer | None]:
    """One answer (or None: abstained) per ticket, at most ``max_concurrency`` at once."""
    texts = few_shot_texts(db, todo, few_shot) if can_call else {}

    def ask(w: Asked) -> LLMAnswer | None:
        t0 = time.perf_counter()
        shots = [Example(texts[n.ticket_id], n.label) for n in _best(w.neighbours)
                 if n.ticket_id in texts]
        answer = llm.classify(w.ticket, w.neighbours or [], labels, ranked=w.ranked,
                              examples=shots, descriptions=descriptions)
        w.timings["llm"] = (time.perf_counter() - t0) * 1000
        return answer

    workers = min(max_concurrency, len(todo))
    # No threads when no call can reach the network (disabled stage, or its circuit breaker
    # open): they would only add latency.
    if workers <= 1 or not can_call:
        return [ask(w) for w in todo]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cca-llm") as pool:
        return list(pool.map(ask, todo))

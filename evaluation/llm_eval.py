"""The LLM stage's cost/accuracy trade-off: the cascade without and with it, and the LLM alone.

Prices are those of the evaluation (per million tokens), not the deployment's settings, so a
small local model's token counts can be priced like the hosted model it stands in for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cascade.cascade import Cascade
from cascade.llm_batch import few_shot_texts
from cascade.llm_prompt import Example
from cascade.llm_stage import DisabledLLMStage, LLMStage
from cca.tickets import Ticket
from evaluation.cascade_eval import evaluate
from evaluation.metrics import percentiles, rate

Progress = Callable[[int], None]


def _tokens(stage: LLMStage) -> dict[str, int]:
    stats = stage.stats() if hasattr(stage, "stats") else {}
    return {k: int(stats.get(k, 0)) for k in ("calls", "prompt_tokens", "completion_tokens")}


def compare(cascade: Cascade, stage: LLMStage, tickets: list[Ticket], truths: list[str], *,
            latency_sample: int = 50, progress: Progress | None = None) -> dict[str, Any]:
    """The cascade on ``tickets`` without the LLM stage, then with ``stage`` (whose prices
    are the evaluation's: each decision's cost is then priced that way)."""
    n = len(tickets)
    cascade.llm = DisabledLLMStage()
    without, _ = evaluate(cascade, tickets, truths, latency_sample=latency_sample,
                          progress=progress)
    cascade.llm = stage
    with_llm, decisions = evaluate(cascade, tickets, truths, latency_sample=latency_sample,
                                   progress=progress)
    asked = [d for d in decisions if "llm" in d.timings_ms]
    with_llm["llm_share"] = rate(len(asked), n)
    with_llm["llm_answered_share"] = with_llm["stage_share"].get("llm", 0.0)
    with_llm["llm_ms"] = percentiles([d.timings_ms["llm"] for d in asked], digits=1)
    return {"n": n, "without_llm": without, "with_llm": with_llm}


def llm_only(cascade: Cascade, stage: LLMStage, tickets: list[Ticket], truths: list[str], *,
             price_in_per_m: float, price_out_per_m: float,
             progress: Progress | None = None) -> dict[str, Any]:
    """The LLM alone on each ticket: retrieval still gives it examples and candidates (the
    neighbours' labels), but no rule, cache answer or classifier guess."""
    labels = cascade.bundle.info.labels
    before = _tokens(stage)
    correct, answered, ms = 0, 0, []
    for ticket, truth in zip(tickets, truths, strict=True):
        w = cascade.retrieve(ticket)
        texts = few_shot_texts(cascade.db, [w], cascade.settings.llm_max_few_shot)
        shots = [Example(texts[nb.ticket_id], nb.label) for nb in w.neighbours
                 if nb.ticket_id in texts]
        t0 = time.perf_counter()
        answer = stage.classify(w.ticket, w.neighbours, labels, ranked=[], examples=shots,
                                descriptions=cascade.descriptions)
        ms.append((time.perf_counter() - t0) * 1000)
        if answer is not None:
            answered += 1
            correct += answer.label == truth
        if progress:
            progress(1)
    n = len(tickets)
    used = {k: v - before[k] for k, v in _tokens(stage).items()}
    cost = (used["prompt_tokens"] * price_in_per_m
            + used["completion_tokens"] * price_out_per_m) / 1e6
    return {"n": n, "accuracy": rate(correct, n), "answered": rate(answered, n),
            "accuracy_when_answered": rate(correct, answered),
            "latency_ms": percentiles(ms, digits=1), **used,
            "cost_per_ticket_usd": rate(cost, n, digits=8)}

"""The LLM stage's cost/accuracy trade-off: the cascade without and with it, and the LLM alone.

Prices are those of the evaluation (per million tokens), not the deployment's settings, so a
small local model's token counts can be priced like the hosted model it stands in for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cascade.cascade import Cascade, Work
from cascade.llm_batch import few_shot_texts
from cascade.llm_prompt import Example
from cascade.llm_stage import DisabledLLMStage, LLMStage
from cca.tickets import Ticket
from evaluation.cascade_eval import evaluate

Progress = Callable[[int], None]


def _pcts(ms: list[float]) -> dict[str, float | None]:
    if not ms:
        return {"p50": None, "p95": None, "p99": None}
    arr = np.asarray(ms)
    return {p: round(float(np.percentile(arr, q)), 1) for p, q in
            (("p50", 50), ("p95", 95), ("p99", 99))}


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
    with_llm["llm_share"] = round(len(asked) / n, 4) if n else 0.0
    with_llm["llm_answered_share"] = with_llm["stage_share"].get("llm", 0.0)
    with_llm["llm_ms"] = _pcts([d.timings_ms["llm"] for d in asked])
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
        work = [Work(ticket=ticket, timings={})]
        cascade._redact(work)  # the LLM only ever sees redacted text
        cascade._embed_and_search(work)
        texts = few_shot_texts(cascade.db, work, cascade.settings.llm_max_few_shot)
        w = work[0]
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
    return {"n": n, "accuracy": round(correct / n, 4) if n else 0.0,
            "answered": round(answered / n, 4) if n else 0.0,
            "accuracy_when_answered": round(correct / answered, 4) if answered else 0.0,
            "latency_ms": _pcts(ms), **used,
            "cost_per_ticket_usd": round(cost / n, 8) if n else 0.0}

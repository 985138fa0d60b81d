"""The LLM stage on labelled tickets: its calibration, and its cost/accuracy trade-off (the
cascade without and with it, and the LLM alone).

Calibration asks the endpoint about the tickets the cheaper stages pass on and records, per
answer, its acceptance cell and whether it was right (``cascade.llm_acceptance``). The
comparison then shows what the stored rule buys: auto-answered precision with the LLM must
not fall below the precision without it, and the extra coverage is what the LLM adds.

Prices are those of the evaluation (per million tokens), not the deployment's settings, so a
small local model's token counts can be priced like the hosted model it stands in for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cascade.cascade import Cascade, Work
from cascade.llm_acceptance import (
    ORDER,
    AcceptanceRule,
    Cell,
    Outcome,
    cell_of,
    target_precision,
)
from cascade.llm_batch import ask_batch, few_shot_texts
from cascade.llm_prompt import Example
from cascade.llm_stage import DisabledLLMStage, LLMStage
from cca.tickets import Decision, Ticket
from evaluation.cascade_eval import evaluate
from evaluation.metrics import percentiles, rate

Progress = Callable[[int], None]


def _tokens(stage: LLMStage) -> dict[str, int]:
    stats = stage.stats() if hasattr(stage, "stats") else {}
    return {k: int(stats.get(k, 0)) for k in ("calls", "prompt_tokens", "completion_tokens")}


def spread(n: int, limit: int | None) -> list[int]:
    """Indices of ``limit`` of ``n`` items spread evenly (all labels stay represented in a
    file sorted by label)."""
    if not limit or limit >= n:
        return list(range(n))
    return sorted({int(i * n / limit) for i in range(limit)})


def passed_on(cascade: Cascade, tickets: list[Ticket], truths: list[str], *,
              batch_size: int = 256, progress: Progress | None = None
              ) -> tuple[list[Work], list[str]]:
    """The tickets every cheaper stage passes on to the LLM, with their true labels: the
    sample an acceptance rule must be measured on (the LLM sees no other tickets)."""
    waiting: list[Work] = []
    waiting_truths: list[str] = []
    for start in range(0, len(tickets), batch_size):
        work, _ = cascade.start_batch(tickets[start:start + batch_size])
        for w, truth in zip(work, truths[start:start + batch_size], strict=True):
            if w.decision is None:
                waiting.append(w)
                waiting_truths.append(truth)
        if progress:
            progress(len(work))
    return waiting, waiting_truths


def calibrate(cascade: Cascade, stage: LLMStage, work: list[Work], truths: list[str], *,
              progress: Progress | None = None) -> list[Outcome]:
    """Ask ``stage`` about each ticket as the cascade would (same candidates, examples and
    concurrency); one outcome per answer with a candidate label (abstentions have none)."""
    labels, s = cascade.bundle.info.labels, cascade.settings
    cascade.llm = stage
    outcomes: list[Outcome] = []
    step = max(1, s.llm_max_concurrency)
    for start in range(0, len(work), step):
        part = work[start:start + step]
        answers = ask_batch(stage, cascade.db, part, labels, few_shot=s.llm_max_few_shot,
                            max_concurrency=s.llm_max_concurrency,
                            can_call=cascade.llm_can_answer, descriptions=cascade.descriptions)
        for w, truth, answer in zip(part, truths[start:start + step], answers, strict=True):
            if answer is not None and answer.label in labels:
                cell = cell_of(answer.label, answer.confidence, w.ranked, w.neighbours,
                               s.llm_min_confidence)
                outcomes.append(Outcome(cell, answer.label == truth))
        if progress:
            progress(len(part))
    return outcomes


def rule_report(rule: AcceptanceRule | None, target: float) -> dict[str, Any]:
    """What the acceptance rule was measured at, cell by cell, and what it accepts."""
    if rule is None:
        return {"calibrated": False, "target_precision": target,
                "llm_calibrated_precision": None}
    accepted = rule.accepted_precision(target)
    routes = {c.cell for c in rule.accepted_cells(target)}
    return {
        "calibrated": True, "endpoint": rule.endpoint, "model": rule.model,
        "bundle_version": rule.bundle_version,
        "created_at": rule.created_at.isoformat() if rule.created_at else None,
        "asked": rule.asked, "answered": rule.answered,
        "overall_precision": round(rule.overall_precision, 4),
        "target_precision": target, "confidence_level": rule.level,
        "confidence_edge": rule.confidence_edge,
        "accepted_cells": len(routes),
        "accepted_answers": sum(c.n for c in rule.cells if c.cell in routes),
        "llm_calibrated_precision": None if accepted is None else round(accepted, 4),
        "cells": [{"cell": c.cell.key, "n": c.n, "correct": c.correct,
                   "precision": round(c.precision, 4), "lower_bound": round(c.lower_bound, 4),
                   "accepted": c.cell in routes} for c in rule.cells],
    }


def _suggestions(decisions: list[Decision], truths: list[str]) -> dict[str, Any]:
    """How often a review's LLM suggestion was the true label (what it saves a reviewer)."""
    pairs = [(d.suggestion, t) for d, t in zip(decisions, truths, strict=True)
             if d.stage == "review" and d.suggestion is not None]
    right = sum(s == t for s, t in pairs)
    return {"n": len(pairs), "share": rate(len(pairs), len(decisions)),
            "accuracy": rate(right, len(pairs))}


def _answers_by_cell(decisions: list[Decision], truths: list[str],
                     edge: float) -> list[dict[str, Any]]:
    """Every LLM answer of the run (routed or suggested) by acceptance cell, right or not: the
    rule's calibration checked on other tickets. The cell is rebuilt from what the decision
    keeps (its top classes give the rank: 1, 2 or 3+; its neighbours; the LLM's confidence)."""
    counts: dict[Cell, list[int]] = {}
    for d, truth in zip(decisions, truths, strict=True):
        said = d.label if d.stage == "llm" else d.suggestion
        confidence = d.confidence if d.stage == "llm" else d.suggestion_confidence
        if said is None or confidence is None:
            continue
        cell = cell_of(said, confidence, [c for c, _ in d.top_classes], d.neighbours, edge)
        tally = counts.setdefault(cell, [0, 0])
        tally[0] += 1
        tally[1] += said == truth
    return [{"cell": cell.key, "n": n, "correct": k, "precision": rate(k, n)}
            for cell, (n, k) in sorted(counts.items(), key=lambda kv: ORDER.index(kv[0]))]


def compare(cascade: Cascade, stage: LLMStage, tickets: list[Ticket], truths: list[str], *,
            latency_sample: int = 50, progress: Progress | None = None) -> dict[str, Any]:
    """The cascade on ``tickets`` without the LLM stage, then with ``stage`` (whose prices
    are the evaluation's: each decision's cost is then priced that way) behind the
    acceptance rule the cascade loaded for it."""
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
    with_llm["suggestions"] = _suggestions(decisions, truths)
    rule = cascade.llm_rule
    with_llm["llm_answers_by_cell"] = _answers_by_cell(
        decisions, truths, rule.confidence_edge if rule else cascade.settings.llm_min_confidence)
    acceptance = rule_report(rule, target_precision(cascade.settings))
    return {
        "n": n, "without_llm": without, "with_llm": with_llm,
        "auto_precision": {"without_llm": without["auto_accuracy"],
                           "with_llm": with_llm["auto_accuracy"]},
        "auto_coverage": {"without_llm": without["auto_coverage"],
                          "with_llm": with_llm["auto_coverage"]},
        "extra_coverage": round(with_llm["auto_coverage"] - without["auto_coverage"], 4),
        "llm_calibrated_precision": acceptance["llm_calibrated_precision"],
        "llm_acceptance": acceptance,
    }


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

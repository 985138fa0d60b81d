"""Measure the cascade on labelled tickets: accuracy, coverage, stage shares, speed, cost.

A review counts as wrong, except for a ticket whose true label is outside the trained label
set (out of scope): there only a review is right.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from cascade.cascade import Cascade
from cca.guarantees import precision_lower_bound
from cca.tickets import STAGES, Decision, Ticket
from evaluation.metrics import percentiles
from evaluation.per_class import below_target, per_class_table
from redaction import Sanitizer

REVIEW = "__review__"


def _is_correct(decision: Decision, truth: str, known: set[str]) -> bool:
    if truth not in known:
        return decision.label is None
    return decision.label == truth


def score(
    decisions: list[Decision], truths: list[str], known: set[str], departments: dict[str, str]
) -> dict:
    """The quality half of the report, from decisions alone (no timing)."""
    n = len(decisions)
    correct = np.array([_is_correct(d, t, known) for d, t in zip(decisions, truths, strict=True)])
    auto = np.array([d.label is not None for d in decisions])
    dept = np.array([
        (d.label is None) if t not in known
        else d.department == departments.get(t, t)
        for d, t in zip(decisions, truths, strict=True)
    ])
    # The best guess for every ticket (a review's top class): the model's raw accuracy, the
    # number to compare with published results that never abstain.
    guesses = [d.label or (d.top_classes[0][0] if d.top_classes else None) for d in decisions]
    top1 = np.array([g == t for g, t in zip(guesses, truths, strict=True)])
    top1_dept = np.array([
        g is not None and departments.get(g, g) == departments.get(t, t)
        for g, t in zip(guesses, truths, strict=True)
    ])
    stages = Counter(d.stage for d in decisions)
    by_stage = {}
    for stage in STAGES:
        mask = np.array([d.stage == stage for d in decisions])
        if mask.any() and stage != "review":
            by_stage[stage] = round(float(correct[mask].mean()), 4)
    predicted = [d.label or REVIEW for d in decisions]
    return {
        "n": n,
        "accuracy": round(float(correct.mean()), 4),
        "macro_f1": round(float(f1_score(truths, predicted, labels=sorted(set(truths)),
                                         average="macro", zero_division=0)), 4),
        "department_accuracy": round(float(dept.mean()), 4),
        "top1_accuracy": round(float(top1.mean()), 4),
        "top1_department_accuracy": round(float(top1_dept.mean()), 4),
        "auto_coverage": round(float(auto.mean()), 4),
        "auto_accuracy": round(float(correct[auto].mean()), 4) if auto.any() else 0.0,
        "stage_share": {s: round(stages.get(s, 0) / n, 4) for s in STAGES},
        "stage_accuracy": by_stage,
        "out_of_scope": int(sum(t not in known for t in truths)),
        "cost_per_ticket_usd": round(sum(d.cost_usd for d in decisions) / n, 8),
        **cache_hits(decisions, correct),
    }


def cache_hits(decisions: list[Decision], correct: np.ndarray,
               confidence: float = 0.95) -> dict:
    """GPTCache-style: how often the cache answered (hits), how often wrongly (a label other
    than the truth, or any label for an out-of-scope ticket), and the one-sided upper
    confidence bound of the wrong-hit rate: what the cache's precision can be promised at."""
    hit = np.array([d.stage == "cache" for d in decisions], dtype=bool)
    hits = int(hit.sum())
    wrong = int((hit & ~correct).sum())
    return {
        "cache_hits": hits,
        "cache_wrong_hits": wrong,
        "cache_hit_rate": round(hits / len(decisions), 4) if decisions else 0.0,
        "cache_wrong_hit_rate": round(wrong / hits, 4) if hits else 0.0,
        "cache_wrong_hit_bound": (round(1 - precision_lower_bound(hits - wrong, hits,
                                                                  confidence), 4)
                                  if hits else 1.0),
    }


def evaluate(
    cascade: Cascade,
    tickets: list[Ticket],
    truths: list[str],
    batch_size: int = 256,
    latency_sample: int = 200,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict, list[Decision]]:
    """Batched run for throughput, then single tickets for honest per-ticket latency."""
    decisions: list[Decision] = []
    t0 = time.perf_counter()
    for start in range(0, len(tickets), batch_size):
        chunk = tickets[start : start + batch_size]
        decisions += cascade.classify_batch(chunk)
        if progress:
            progress(len(chunk))
    elapsed = time.perf_counter() - t0
    step = max(1, len(tickets) // max(latency_sample, 1))
    latencies = []
    for ticket in tickets[::step][:latency_sample]:
        t1 = time.perf_counter()
        cascade.classify(ticket)
        latencies.append((time.perf_counter() - t1) * 1000)
    info = cascade.bundle.info
    report = score(decisions, truths, set(info.labels), info.departments)
    report.update(
        {
            "latency_ms": percentiles(latencies or [0.0], digits=2),
            "latency_sample": len(latencies),
            "throughput_per_s": round(len(tickets) / elapsed, 1),
            "batch_size": batch_size,
            "model_version": cascade.version,
        }
    )
    table = per_class_table(decisions, truths, info)
    report["classes_below_target"] = below_target(table)
    report["per_class"] = table  # last: the long part of the file
    return report, decisions


def write_predictions(
    path: Path, tickets: list[Ticket], truths: list[str], decisions: list[Decision],
    sanitizer: Sanitizer,
) -> None:
    """One JSON line per ticket, with its text redacted: ``cca run`` writes this file under
    ``CCA_HOME/reports``, which neither retention nor an erasure reaches."""
    path.parent.mkdir(parents=True, exist_ok=True)
    texts = [r.text for r in sanitizer.redact_many([t.text for t in tickets])]
    with path.open("w", encoding="utf-8") as fh:
        for t, text, truth, d in zip(tickets, texts, truths, decisions, strict=True):
            fh.write(json.dumps({
                "id": t.id, "text": text, "label": truth, "predicted": d.label,
                "department": d.department, "stage": d.stage, "confidence": d.confidence,
                "urgency": d.urgency, "rule_id": d.rule_id,
            }) + "\n")

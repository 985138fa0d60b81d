"""An acceptance rule for a fake LLM endpoint, stored as ``cca llm calibrate`` would store it.

Tests that need the LLM to *route* tickets (its faults, explanations, latency) store this for
the fake endpoint first: an endpoint measured right on every high-confidence answer and
wrong on almost every low-confidence one, behind the home's serving model. Calibration itself
is exercised against the fake in tests/integration/test_llm_calibrate.py.
"""

from __future__ import annotations

from itertools import product

from cascade.llm_acceptance import CONFIDENCES, NEIGHBOURS, RANKS, Cell, Outcome, build_rule
from cca.settings import Settings
from cca.store import open_database
from cca.store.llm_rules_repo import save_rule
from serving.model_source import resolve


def store_high_confidence_rule(settings: Settings, base_url: str, model: str,
                               per_cell: int = 400) -> None:
    """Every high-confidence cell measured right ``per_cell`` times out of ``per_cell``;
    every low-confidence cell right once. Stored behind the model the service would serve."""
    choice = resolve(settings)
    assert choice is not None
    version = choice.bundle_version
    outcomes = [Outcome(Cell(rank, votes, confidence), confidence == "high" or i == 0)
                for rank, votes, confidence in product(RANKS, NEIGHBOURS, CONFIDENCES)
                for i in range(per_cell)]
    rule = build_rule(outcomes, endpoint=base_url, model=model, bundle_version=version,
                      confidence_edge=settings.llm_min_confidence,
                      level=settings.guarantee_confidence, asked=len(outcomes))
    db = open_database(settings)
    try:
        with db.begin() as conn:
            save_rule(conn, endpoint=rule.endpoint, model=model, bundle_version=version,
                      sample_size=rule.asked, answered=rule.answered,
                      overall_precision=rule.overall_precision, rule=rule.to_json())
    finally:
        db.dispose()

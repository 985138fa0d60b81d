"""The LLM acceptance rule: cells, Clopper-Pearson bounds, and who may route a ticket."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from scipy.stats import beta

from cascade.llm_acceptance import (
    AcceptanceRule,
    Cell,
    Outcome,
    build_rule,
    cell_of,
    endpoint_key,
    judge,
    lower_bound,
)
from cca.store.llm_rules_repo import StoredRule
from cca.tickets import Neighbour

RANKED = ["refund", "card_lost", "top_up", "fees"]
EDGE = 0.7
TOP = Cell("1", "majority", "high")


def _n(*labels: str) -> list[Neighbour]:
    """Neighbours, nearest first."""
    return [Neighbour(ticket_id=f"t{i}", label=label, similarity=0.9 - i / 100)
            for i, label in enumerate(labels)]


def _rule(cells: dict[Cell, tuple[int, int]], bundle: str = "b1") -> AcceptanceRule:
    outcomes = [Outcome(cell, i < right) for cell, (n, right) in cells.items()
                for i in range(n)]
    return build_rule(outcomes, endpoint="http://llm:8000/v1/", model="m",
                      bundle_version=bundle, confidence_edge=EDGE, level=0.95,
                      asked=len(outcomes) + 3)


@pytest.mark.parametrize(("label", "confidence", "neighbours", "expected"), [
    ("refund", 0.9, _n("refund", "refund", "fees"), Cell("1", "majority", "high")),
    ("card_lost", 0.7, _n("card_lost", "refund", "fees"), Cell("2", "nearest", "high")),
    ("top_up", 0.69, _n("fees", "top_up", "top_up"), Cell("3+", "majority", "low")),
    ("fees", 0.9, _n("refund", "fees"), Cell("3+", "none", "high")),  # half is no majority
    ("other", 0.9, [], Cell("3+", "none", "high")),  # not ranked, no neighbours
])
def test_an_answer_falls_in_the_cell_of_what_the_earlier_stages_knew(
        label, confidence, neighbours, expected):
    assert cell_of(label, confidence, RANKED, neighbours, EDGE) == expected


def test_the_nearest_neighbour_is_the_most_similar_not_the_first_listed():
    shuffled = [Neighbour(ticket_id="a", label="fees", similarity=0.5),
                Neighbour(ticket_id="b", label="refund", similarity=0.95),
                Neighbour(ticket_id="c", label="top_up", similarity=0.7)]
    assert cell_of("refund", 0.9, RANKED, shuffled, EDGE).neighbours == "nearest"


def test_lower_bound_is_the_clopper_pearson_interval_end():
    assert lower_bound(0, 10, 0.95) == 0.0
    assert lower_bound(5, 0, 0.95) == 0.0
    assert lower_bound(95, 100, 0.95) == pytest.approx(beta.ppf(0.025, 95, 6))
    # all right: (alpha/2) ** (1/n); 183 answers in a row are needed to clear 98 %
    assert lower_bound(182, 182, 0.95) < 0.98 <= lower_bound(183, 183, 0.95)
    assert lower_bound(50, 50, 0.95) == pytest.approx(0.025 ** (1 / 50))


def test_build_rule_counts_each_cell_on_its_own():
    low = Cell("2", "none", "high")
    rule = _rule({TOP: (200, 200), low: (40, 30)})
    assert rule.endpoint == "http://llm:8000/v1"  # one spelling per endpoint
    assert (rule.answered, rule.correct, rule.asked) == (240, 230, 243)
    assert rule.overall_precision == pytest.approx(230 / 240)
    top, weak = rule.stats(TOP), rule.stats(low)
    assert top is not None and weak is not None
    assert (top.n, top.correct, weak.n, weak.correct) == (200, 200, 40, 30)
    assert top.accepted(0.98) and not weak.accepted(0.98)
    assert rule.accepted_cells(0.98) == [top]
    assert rule.accepted_precision(0.98) == 1.0
    assert rule.accepted_precision(0.999) is None  # nothing that sure


def test_a_cell_below_target_is_not_accepted_even_when_its_rate_looks_high():
    # 99 % measured on 100 answers: the interval's lower end (~94.6 %) is below 98 %.
    rule = _rule({TOP: (100, 99)})
    verdict = judge(rule, "refund", 0.9, RANKED, _n("refund", "refund"), target=0.98,
                    bundle_version="b1")
    assert not verdict.accepted and verdict.cell == TOP
    assert "measured at 99% (99/100, at least 9" in verdict.reason
    assert verdict.reason.endswith("< 98%")
    # and a lower target it clears
    assert judge(rule, "refund", 0.9, RANKED, _n("refund", "refund"), target=0.9,
                 bundle_version="b1").accepted


def test_an_answer_in_an_accepted_cell_routes_others_do_not():
    rule = _rule({TOP: (300, 300), Cell("2", "none", "high"): (300, 300)})
    ok = judge(rule, "refund", 0.95, RANKED, _n("refund", "refund", "fees"), target=0.98,
               bundle_version="b1")
    assert ok.accepted and ok.reason == ""
    # same label, but the model's own confidence is low: a cell never measured
    unseen = judge(rule, "refund", 0.2, RANKED, _n("refund", "refund"), target=0.98,
                   bundle_version="b1")
    assert not unseen.accepted and "never seen in calibration" in unseen.reason


def test_an_uncalibrated_endpoint_only_suggests():
    verdict = judge(None, "refund", 0.99, RANKED, _n("refund", "refund", "refund"),
                    target=0.5, bundle_version="b1")
    assert not verdict.accepted
    assert verdict.reason.startswith("LLM endpoint not calibrated: suggestion only")


def test_a_rule_calibrated_behind_another_model_only_suggests():
    rule = _rule({TOP: (300, 300)}, bundle="old")
    verdict = judge(rule, "refund", 0.9, RANKED, _n("refund", "refund"), target=0.98,
                    bundle_version="new")
    assert not verdict.accepted and "calibrated behind model old, not new" in verdict.reason


def test_a_rule_survives_its_stored_json():
    rule = _rule({TOP: (200, 199), Cell("3+", "none", "low"): (7, 1)})
    stored = StoredRule(id=4, endpoint=rule.endpoint, model="m",
                        created_at=datetime(2026, 12, 7, tzinfo=UTC), bundle_version="b1",
                        sample_size=rule.asked, answered=rule.answered,
                        overall_precision=rule.overall_precision, rule=rule.to_json())
    back = AcceptanceRule.of_stored(stored)
    assert back.cells == tuple(
        type(c)(c.cell, c.n, c.correct, round(c.lower_bound, 6)) for c in rule.cells)
    assert (back.asked, back.level, back.confidence_edge) == (rule.asked, 0.95, EDGE)
    assert back.created_at == stored.created_at
    with pytest.raises(ValueError, match="format"):
        AcceptanceRule.of_stored(StoredRule(**{**stored.__dict__, "rule": {"format": 99}}))


def test_endpoint_key_ignores_a_trailing_slash():
    assert endpoint_key(" http://h:1/v1/ ") == endpoint_key("http://h:1/v1")

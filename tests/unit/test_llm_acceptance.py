"""The LLM acceptance rule: cells, Clopper-Pearson bounds, and who may route a ticket."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from scipy.stats import beta

from cascade.llm_acceptance import (
    ORDER,
    AcceptanceRule,
    Cell,
    Outcome,
    build_rule,
    cell_of,
    endpoint_key,
    judge,
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


def test_cells_are_tested_in_a_fixed_order_most_plausible_first():
    assert len(ORDER) == len(set(ORDER)) == 18
    assert ORDER[0] == TOP and ORDER[-1] == Cell("3+", "none", "low")
    assert ORDER.index(Cell("3+", "none", "high")) < ORDER.index(Cell("1", "majority", "low"))


def test_each_cell_has_its_one_sided_clopper_pearson_bound():
    rule = _rule({TOP: (100, 95), Cell("2", "none", "high"): (150, 150)})
    top, second = rule.stats(TOP), rule.stats(Cell("2", "none", "high"))
    assert top is not None and second is not None
    assert top.lower_bound == pytest.approx(beta.ppf(0.05, 95, 6))
    assert second.lower_bound == pytest.approx(0.05 ** (1 / 150))  # all right: alpha ** (1/n)
    assert rule.cells == (top, second)  # kept in the order they are tested


def test_build_rule_counts_each_cell_on_its_own():
    low = Cell("2", "none", "high")
    rule = _rule({TOP: (200, 200), low: (40, 30)})
    assert rule.endpoint == "http://llm:8000/v1"  # one spelling per endpoint
    assert (rule.answered, rule.correct, rule.asked) == (240, 230, 243)
    assert rule.overall_precision == pytest.approx(230 / 240)
    top, weak = rule.stats(TOP), rule.stats(low)
    assert top is not None and weak is not None
    assert (top.n, top.correct, weak.n, weak.correct) == (200, 200, 40, 30)
    assert top.passes(0.98) and not weak.passes(0.98)
    assert rule.accepted_cells(0.98) == [top]
    assert rule.accepted_precision(0.98) == 1.0
    assert rule.accepted_precision(0.999) is None  # nothing that sure


def test_the_sequence_stops_at_the_first_cell_that_fails():
    """A later cell that passes on its own is not accepted once an earlier one failed: the
    stop is what makes all accepted cells meet the target together."""
    second = Cell("1", "nearest", "high")
    late = Cell("3+", "none", "low")
    rule = _rule({second: (300, 290), late: (300, 300)})
    assert rule.stats(late).passes(0.98)
    assert rule.accepted_cells(0.98) == []
    verdict = judge(rule, "fees", 0.1, RANKED, [], target=0.98, bundle_version="b1")
    assert not verdict.accepted and verdict.cell == late
    assert verdict.reason.endswith("but tested after a cell that fell short of 98%")


def test_a_cell_with_too_few_answers_is_skipped_not_a_stop():
    # 100 right of 100 cannot show 98 % at 95 % (149 needed): skipped, and the next is tested
    few, next_ = TOP, Cell("1", "nearest", "high")
    rule = _rule({few: (100, 100), next_: (200, 200)})
    assert [c.cell for c in rule.accepted_cells(0.98)] == [next_]
    verdict = judge(rule, "refund", 0.9, RANKED, _n("refund", "refund"), target=0.98,
                    bundle_version="b1")
    assert not verdict.accepted
    assert verdict.reason == ("LLM answer in a cell measured at 100% (100/100, at least 97% at "
                              "95% confidence): too few answers to show 98%")


def test_a_cell_below_target_is_not_accepted_even_when_its_rate_looks_high():
    # 99 % measured on 300 answers: the bound (~97.4 %) is below 98 %.
    rule = _rule({TOP: (300, 297)})
    verdict = judge(rule, "refund", 0.9, RANKED, _n("refund", "refund"), target=0.98,
                    bundle_version="b1")
    assert not verdict.accepted and verdict.cell == TOP
    assert "measured at 99% (297/300, at least 97% at 95% confidence)" in verdict.reason
    assert verdict.reason.endswith("< 98%")
    # and a lower target it clears
    assert judge(rule, "refund", 0.9, RANKED, _n("refund", "refund"), target=0.95,
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

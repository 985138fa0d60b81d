"""Per-class operating points: exact bounds, the fixed-sequence test, targets from YAML."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from cca.errors import ConfigError
from cca.guarantees import fixed_sequence, min_support, precision_lower_bound
from cca.operating_points import Evidence, OperatingPoints, Targets, Unknowns, choose


def test_lower_bound_inverts_the_exact_binomial_test() -> None:
    # The bound is the precision at which seeing >= k right of n has probability 5 %.
    for k, n in ((97, 100), (290, 300), (29, 29), (5, 9)):
        bound = precision_lower_bound(k, n, 0.95)
        assert binom.sf(k - 1, n, bound) == pytest.approx(0.05, abs=1e-6)
    assert precision_lower_bound(0, 10) == 0.0
    assert precision_lower_bound(0, 0) == 0.0


def test_min_support_is_the_fewest_perfect_answers_that_can_reach_the_target() -> None:
    need = min_support(0.90, 0.95)
    assert need == 29
    assert precision_lower_bound(need, need) >= 0.90 > precision_lower_bound(need - 1, need - 1)
    with pytest.raises(ValueError):
        min_support(1.0)


def test_fixed_sequence_stops_at_the_first_failure_even_if_lower_thresholds_pass() -> None:
    table = {0.9: (100, 100), 0.8: (150, 160), 0.7: (400, 410)}  # 0.8 fails, 0.7 would pass

    def counts(t: float) -> tuple[int, int]:
        return table.get(t, (0, 0))

    chosen = fixed_sequence(counts, 0.95, 0.95, grid=(0.95, 0.9, 0.8, 0.7))
    assert chosen == (0.9, 100, 100)  # 0.95 answers nothing: skipped, not a failure
    assert fixed_sequence(lambda t: (10, 100), 0.95, grid=(0.9,)) is None


def _evidence(rng: np.random.Generator) -> Evidence:
    """Class 'good': 300 tickets, right whenever the score is high; class 'weak': 300
    tickets right only 70 % of the time whatever the score."""
    score = rng.random(600)
    pred = np.array(["good"] * 300 + ["weak"] * 300)
    correct = np.concatenate([score[:300] > 0.2, rng.random(300) < 0.7])
    return Evidence(score=score, pred=pred, correct=correct, earlier_answered=100,
                    earlier_correct=100, n_total=700)


def test_a_class_whose_bound_fails_at_every_threshold_goes_to_review() -> None:
    points = choose(_evidence(np.random.default_rng(0)), ["good", "weak"], {},
                    Targets(target_precision=0.95, min_precision=0.90))
    good, weak = points.classes["good"], points.classes["weak"]
    assert weak.status == "review" and weak.threshold is None and weak.support == 0
    assert not points.accepts("weak", 0.999)
    assert good.status == "earned" and good.bound >= 0.90 and good.precision == 1.0
    assert good.threshold is not None and points.accepts("good", good.threshold)
    assert not points.accepts("good", good.threshold - 0.01)
    assert points.overall["holds"] and points.overall["bound"] >= 0.95
    assert points.overall["support"] == 100 + good.support
    again = OperatingPoints.from_dict(points.to_dict())
    assert again == points


def test_overall_target_the_earlier_stages_break_closes_the_classifier() -> None:
    ev = _evidence(np.random.default_rng(1))
    bad = Evidence(ev.score, ev.pred, ev.correct, earlier_answered=400, earlier_correct=300,
                   n_total=1000)
    points = choose(bad, ["good", "weak"], {}, Targets(0.95, 0.90))
    assert not points.overall["holds"]
    assert all(p.threshold is None for p in points.classes.values())


def test_stricter_class_override_raises_its_threshold() -> None:
    ev = _evidence(np.random.default_rng(2))
    # 'good' is right above 0.3: its sequence starts where it answers half its tickets
    ev = Evidence(ev.score, ev.pred, np.where(ev.pred == "good", ev.score > 0.3, ev.correct),
                  100, 100, 700)
    loose = choose(ev, ["good", "weak"], {}, Targets(0.5, 0.6))
    strict = choose(ev, ["good", "weak"], {"good": "Cards"},
                    Targets(0.5, 0.6, departments={"Cards": 0.97}))
    assert strict.classes["good"].target == 0.97
    assert strict.classes["good"].threshold > loose.classes["good"].threshold


def test_unknown_rejection_floor_raises_the_common_level() -> None:
    ev = _evidence(np.random.default_rng(3))
    unknowns = Unknowns(score=np.linspace(0, 1, 200), pred=np.array(["good"] * 200),
                        rejection=0.9)
    points = choose(ev, ["good", "weak"], {}, Targets(0.95, 0.9), unknowns=unknowns)
    assert points.overall["unknown_answered"] <= 0.1 + 1e-9
    assert points.classes["good"].threshold >= 0.9


def test_targets_yaml_overrides_and_errors(tmp_path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text("target_precision: 0.97\nmin_precision: 0.85\n"
                    "departments:\n  Cards: {min_precision: 0.95}\n"
                    "classes:\n  lost_card: {min_precision: 0.99}\n")
    targets = Targets.load(path, 0.98, 0.9)
    assert targets.target_precision == 0.97
    assert targets.for_class("lost_card", "Cards") == 0.99
    assert targets.for_class("top_up", "Cards") == 0.95
    assert targets.for_class("top_up", "Other") == 0.85
    assert Targets.load(None, 0.98, 0.9) == Targets(0.98, 0.9)
    path.write_text("classes:\n  lost_card: {min_precision: 1.5}\n")
    with pytest.raises(ConfigError, match=r"classes.lost_card.*between 0 and 1"):
        Targets.load(path, 0.98, 0.9)
    path.write_text("classes:\n  lost_card: 0.9\n")
    with pytest.raises(ConfigError, match="min_precision"):
        Targets.load(path, 0.98, 0.9)


def test_the_classifier_gate_answers_only_above_an_earned_threshold() -> None:
    from cascade.classifier_gate import ClassifierGate

    points = choose(_evidence(np.random.default_rng(0)), ["good", "weak"], {},
                    Targets(target_precision=0.95, min_precision=0.90))
    good = points.classes["good"].threshold
    gate = ClassifierGate(threshold=0.5, points=points, trust=None)
    assert gate.judge("good", 0.99, good + 0.001)[0]
    sure, why = gate.judge("good", 0.99, good - 0.001)
    assert not sure and "threshold" in why and "95% confidence" in why
    sure, why = gate.judge("weak", 0.999, 0.999)
    assert not sure and "has not earned automatic answers" in why
    common = ClassifierGate(threshold=0.8, points=None, trust=None)
    assert common.judge("weak", 0.81, None) == (True, "calibrated probability 0.810 >= 0.800")
    assert not common.judge("good", 0.79, 0.99)[0]

"""The promotion gate and the id-hash holdout: pure functions, no servers."""

from __future__ import annotations

import json
from dataclasses import replace

from training.gate import GatePolicy, gate_decision, guarantee_summary, promotion_gate
from training.holdout import holdout_f1, in_holdout, split_by_id
from training.results import (
    Candidate,
    ChampionScores,
    Evaluation,
    LoggedRun,
    Promotion,
    Registration,
)

POLICY = GatePolicy(min_macro_f1=0.88, max_class_drop=0.05, tolerance=0.0)


def scores(macro: float, **per_class: float) -> dict:
    return {"macro_f1": macro, "per_class_f1": per_class}


def test_first_model_needs_only_the_floor():
    assert promotion_gate(scores(0.90, a=0.9), None, POLICY).passed
    refused = promotion_gate(scores(0.87, a=0.87), None, POLICY)
    assert not refused.passed and refused.reasons == ["macro-F1 0.8700 < required 0.8800"]


def test_candidate_must_not_be_worse_than_the_champion():
    champion = scores(0.93, a=0.93, b=0.93)
    worse = promotion_gate(scores(0.92, a=0.92, b=0.92), champion, POLICY)
    assert not worse.passed and "champion's 0.9300" in worse.reasons[0]
    tolerant = GatePolicy(min_macro_f1=0.88, max_class_drop=0.05, tolerance=0.02)
    assert promotion_gate(scores(0.92, a=0.92, b=0.92), champion, tolerant).passed


def test_one_class_collapsing_is_refused_even_when_the_average_improves():
    champion = scores(0.90, a=0.90, b=0.90, c=0.90)
    candidate = scores(0.92, a=1.0, b=1.0, c=0.76)
    result = promotion_gate(candidate, champion, POLICY)
    assert not result.passed
    assert result.reasons == ["1 class(es) drop more than 0.050 F1: c 0.900->0.760"]


def test_drop_exactly_at_the_margin_passes_and_a_missing_class_counts_as_zero():
    champion = scores(0.90, a=0.90, b=0.90)
    assert promotion_gate(scores(0.90, a=0.85, b=0.95), champion, POLICY).passed
    missing = promotion_gate(scores(0.95, a=0.95), champion, POLICY)
    assert not missing.passed and "b 0.900->0.000" in missing.reasons[0]


def test_every_reason_is_reported():
    champion = scores(0.95, a=0.95, b=0.95)
    result = promotion_gate(scores(0.50, a=0.5, b=0.5), champion, POLICY)
    assert len(result.reasons) == 3


def test_holdout_membership_depends_only_on_the_id():
    ids = [f"t-{i}" for i in range(4000)]
    held = [i for i in ids if in_holdout(i, 0.15)]
    assert held == [i for i in ids if in_holdout(i, 0.15)]
    assert 0.13 < len(held) / len(ids) < 0.17
    assert set(held) <= {i for i in ids if in_holdout(i, 0.3)}  # a larger fraction only adds


def test_split_keeps_every_class_in_the_fit_part():
    ids = [f"t-{i}" for i in range(200)]
    tiny = next(i for i in ids if in_holdout(i, 0.5))  # its only ticket hashes into holdout
    labels = ["tiny" if i == tiny else "big" for i in ids]
    split = split_by_id(ids, labels, 0.5)
    assert split.kept_in_fit == ["tiny"]
    assert ids.index(tiny) in split.fit and ids.index(tiny) not in split.holdout
    assert sorted(split.fit + split.holdout) == list(range(200))
    assert "kept in fit: tiny" in split.describe()


def test_holdout_f1_scores_only_classes_in_the_holdout():
    macro, per_class = holdout_f1(["a", "a", "b"], ["a", "c", "b"])
    assert set(per_class) == {"a", "b"}
    assert per_class == {"a": 0.666667, "b": 1.0} and macro == 0.833333


def test_classes_the_champion_kept_whole_in_fit_are_not_compared():
    # the champion fitted every ticket of "c", holdout ones included: its 1.0 there is not earned
    champion = scores(0.95, a=0.90, b=0.95, c=1.0)
    candidate = scores(0.90, a=0.90, b=0.95, c=0.85)
    assert not promotion_gate(candidate, champion, POLICY).passed
    result = promotion_gate(candidate, champion, POLICY, champion_saw=["c", "zz"])
    assert result.passed, result.reasons
    assert result.notes[0] == ("not compared, the champion was fit on their holdout tickets "
                               "(kept whole in its fit): c")
    worse = promotion_gate(scores(0.90, a=0.80, b=0.95, c=0.95), champion, POLICY,
                           champion_saw=["c"])
    assert "(on the 2 classes compared)" in worse.reasons[0]


def registered(champion: ChampionScores | None, kept_in_fit: list[str] | None = None
               ) -> Registration:
    """Version 3, registered after training and evaluation (what the gate reads)."""
    run = LoggedRun(run_id="r1", model_uri="models:/m-1", model_id="m-1", mlflow_seconds=1.0,
                    pyfunc_log_seconds=0.5)
    candidate = Candidate(
        bundle_version="clf-1", since="2026-01-01T00:00:00+00:00",
        metrics={"holdout_accuracy": 0.95}, n_fit=40, n_holdout=8, labels=2,
        kept_in_fit=kept_in_fit or [], fit_seconds=0.1, holdout_ids=["t1", "t2"],
        holdout_labels=["a", "a"], run=run)
    evaluation = Evaluation(candidate=candidate, holdout_n=2, notes=[],
                            candidate_scores=scores(0.95, a=0.95), champion=champion)
    return Registration(evaluation=evaluation, model_version="3")


def champion_v2(champion_scores: dict | None, embeddings: tuple[str, str] = ("s", "d"),
                configured: tuple[str, str] = ("s", "d")) -> ChampionScores:
    return ChampionScores(version="2", bundle_version="clf-0", scores=champion_scores,
                          kept_in_fit=[], embeddings=list(embeddings),
                          configured=list(configured))


def test_a_champion_that_could_not_be_scored_refuses_promotion():
    champion = champion_v2(None, ("static-a", "deep-a"), ("static-b", "deep-b"))
    result = gate_decision(registered(champion), "2", POLICY)
    assert not result.passed and "no champion to compare with" not in result.notes
    assert result.reasons == [
        "champion v2 was trained with embeddings ('static-a', 'deep-a'), not the configured "
        "('static-b', 'deep-b'); cannot compare on the same holdout: promote by hand with "
        "`cca promote 3` if intended"]


def test_gate_decision_checks_the_champion_and_reports_kept_classes():
    first = gate_decision(registered(None, kept_in_fit=["tiny"]), None, POLICY)
    assert first.passed
    assert first.notes[-1] == "not scored, kept whole in the candidate's fit: tiny"
    champion = champion_v2(scores(0.90, a=0.90))
    assert gate_decision(registered(champion), "2", POLICY).passed
    moved = gate_decision(registered(champion), "4", POLICY)
    assert not moved.passed and moved.reasons == [
        "champion changed since evaluation (v2 -> v4): re-evaluate"]


def test_step_results_travel_as_json_and_read_back_unchanged():
    for champion in (None, champion_v2(scores(0.90, a=0.90))):
        registration = registered(champion, kept_in_fit=["tiny"])
        flat = json.loads(json.dumps(registration.to_dict()))  # an Airflow XCom
        assert Registration.from_dict(flat) == registration
        evaluation = registration.evaluation
        assert Evaluation.from_dict(json.loads(json.dumps(evaluation.to_dict()))) == evaluation
        assert Candidate.from_dict(flat) == evaluation.candidate
    # each step's dict keeps every key of the step before it, and adds its own: a decision
    # made now says what keeps serving, one made earlier says so instead (as before #19)
    promotion = Promotion(registration, promoted=False, reasons=["r"], notes=["n"],
                          serving="champion v2 keeps serving")
    flat = promotion.to_dict()
    keys = list(flat)
    assert keys[:len(registration.to_dict())] == list(registration.to_dict())
    assert keys[-3:] == ["promoted", "reasons", "serving"] and flat["notes"] == ["n"]
    assert "already_decided" not in flat
    assert {"run_id", "model_uri", "bundle_version", "holdout_ids", "model_version"} <= set(keys)
    earlier = Promotion(registration, promoted=True, reasons=[], notes=["n"],
                        already_decided=True).to_dict()
    assert list(earlier)[-3:] == ["promoted", "reasons", "already_decided"]
    assert earlier["already_decided"] is True and "serving" not in earlier


def test_identical_texts_land_on_the_same_side():
    ids = [f"t{i}" for i in range(400)]
    texts = [f"ticket number {i // 2}" for i in range(400)]  # pairs of identical texts
    texts[1] = "  ticket   number 0 "  # same words, other whitespace
    labels = [f"c{i % 4}" for i in range(400)]
    split = split_by_id(ids, labels, 0.3, texts=texts)
    held = set(split.holdout)
    assert held and len(held) < 400
    for i in range(0, 400, 2):
        assert (i in held) == (i + 1 in held)


def points(holds: bool, bound: float, **status: str) -> dict:
    """Operating points as ``cca.bundle.BundleInfo.operating_points`` holds them."""
    return {"target_precision": 0.98, "class_min_precision": 0.90,
            "overall": {"precision": bound + 0.01, "bound": bound, "support": 500,
                        "coverage": 0.8, "holds": holds},
            "classes": {label: {"threshold": 0.6 if s == "earned" else None, "status": s}
                        for label, s in status.items()}}


def with_guarantees(candidate: dict, champion: dict) -> Registration:
    base = registered(replace(champion_v2(scores(0.90, a=0.90)),
                              guarantee=guarantee_summary(champion)))
    cand = replace(base.evaluation.candidate, guarantee=guarantee_summary(candidate))
    return replace(base, evaluation=replace(base.evaluation, candidate=cand))


def test_a_candidate_that_loses_the_champions_precision_guarantee_is_refused():
    champion = points(True, 0.981, a="earned", b="earned", c="review")
    lost = gate_decision(with_guarantees(points(False, 0.962, a="earned", b="review",
                                                c="review"), champion), "2", POLICY)
    assert not lost.passed
    assert lost.reasons == [
        "precision guarantee fails: overall bound 0.9620 < target 0.9800, where champion "
        "v2's held (0.9810)",
        "1 class(es) earned by champion v2 would go to review: b"]
    # better F1 does not buy it back; the same guarantee (or a better one) passes
    kept = gate_decision(with_guarantees(points(True, 0.983, a="earned", b="earned",
                                                c="earned"), champion), "2", POLICY)
    assert kept.passed, kept.reasons
    # a champion whose guarantee did not hold sets no overall bar
    weak = points(False, 0.95, a="earned", b="review")
    assert gate_decision(with_guarantees(points(False, 0.94, a="earned", b="review"), weak),
                         "2", POLICY).passed


def test_bundles_without_operating_points_are_not_compared_on_the_guarantee():
    old_champion = gate_decision(with_guarantees(points(False, 0.9, a="review"), {}), "2",
                                 POLICY)
    assert old_champion.passed
    assert "precision guarantee not compared: champion v2 has no operating points" in (
        old_champion.notes)
    old_candidate = gate_decision(with_guarantees({}, points(True, 0.99, a="earned")), "2",
                                  POLICY)
    assert old_candidate.passed
    assert guarantee_summary({}) == {}


def test_guarantees_travel_in_the_xcoms_and_older_xcoms_still_read():
    registration = with_guarantees(points(True, 0.99, a="earned"), points(True, 0.98, a="earned"))
    flat = json.loads(json.dumps(registration.to_dict()))
    assert Registration.from_dict(flat) == registration
    assert flat["guarantee"]["earned"] == ["a"] and flat["champion"]["guarantee"]["holds"]
    del flat["guarantee"], flat["champion"]["guarantee"]  # written before the field existed
    older = Registration.from_dict(flat)
    assert older.evaluation.candidate.guarantee == {} == older.evaluation.champion.guarantee


def test_the_gate_reports_the_figures_behind_its_decision():
    champion = scores(0.90, a=0.90, b=0.90, c=0.90)
    result = promotion_gate(scores(0.92, a=1.0, b=0.95, c=0.81), champion, POLICY)
    assert (result.candidate_macro_f1, result.champion_macro_f1) == (0.92, 0.90)
    assert result.delta_macro_f1 == 0.02
    assert (result.worst_class, result.worst_class_drop) == ("c", 0.09)
    improved = promotion_gate(scores(0.95, a=0.95, b=0.95, c=0.95), champion, POLICY)
    assert improved.passed and improved.worst_class_drop == -0.05
    first = promotion_gate(scores(0.90, a=0.9), None, POLICY)
    assert first.champion_macro_f1 is None and first.delta_macro_f1 is None

import pytest

from cascade.vector_cache import CachePolicy, decide, propose, reuse_bound, track_record
from cca.settings import Settings
from cca.tickets import Decision, Neighbour
from evaluation.cascade_eval import score
from training.labelled_set import (
    CacheTrackRecord,
    cache_folds,
    out_of_fold_answers,
    track_record_seeds,
)

POLICY = CachePolicy(min_similarity=0.92, min_precision=0.90, topk_agree=3,
                     topk_min_confidence=0.85, prior_strength=2.0)


def n(label: str, sim: float, tid: str = "t") -> Neighbour:
    return Neighbour(ticket_id=tid, label=label, similarity=sim)


def test_track_record_prior_keeps_unproven_labels_out():
    assert track_record(0, 0, 2.0) == 0.5
    assert track_record(98, 97, 2.0) > 0.97


def test_reuse_bound_is_the_exact_binomial_lower_bound():
    # All right: the Clopper-Pearson bound is alpha ** (1 / n).
    assert reuse_bound(29, 29) == pytest.approx(0.05 ** (1 / 29))
    assert reuse_bound(0, 0) == 0.0
    assert reuse_bound(120, 116) < 116 / 120 < track_record(120, 116, 2.0) + 0.01


def test_a_label_is_reused_only_once_its_bound_reaches_the_class_minimum():
    near = [n("a", 0.99)]
    # 28 of 28 right: bound 0.8985 < 0.90; 29 of 29: 0.9019 >= 0.90.
    assert decide(near, {"a": (28, 28)}, POLICY) is None
    assert decide(near, {"a": (29, 29)}, POLICY) is not None
    # A high point estimate on many reuses passes where the old 0.98 posterior mean refused it.
    answer = decide(near, {"a": (120, 116)}, POLICY)
    assert answer is not None and answer.label == "a"
    assert "95 % lower bound 0.9" in answer.reason and "over 120 reuses" in answer.reason
    assert answer.confidence == pytest.approx(track_record(120, 116, 2.0))
    # Plenty of evidence that the label is right only 85 % of the time: never reused.
    assert decide(near, {"a": (1000, 850)}, POLICY) is None
    stricter = CachePolicy(min_similarity=0.92, min_precision=0.97)
    assert decide(near, {"a": (120, 116)}, stricter) is None


def test_policy_takes_the_class_minimum_and_confidence_from_the_settings():
    s = Settings(home="/tmp/unused-home", class_min_precision=0.93, guarantee_confidence=0.9)
    policy = CachePolicy.from_settings(s)
    assert (policy.min_precision, policy.confidence) == (0.93, 0.9)
    assert policy.min_similarity == s.cache_min_similarity
    # 29 of 29 right: bound 0.05 ** (1/29) = 0.902 at 95 %, 0.10 ** (1/29) = 0.924 at 90 %.
    assert decide([n("a", 0.99)], {"a": (29, 29)}, policy) is None
    assert decide([n("a", 0.99)], {"a": (37, 37)}, policy) is not None


def test_high_similarity_alone_is_not_enough():
    neighbours = [n("a", 0.99), n("b", 0.5)]
    assert decide(neighbours, {}, POLICY) is None
    assert decide(neighbours, {"a": (100, 70)}, POLICY) is None
    answer = decide(neighbours, {"a": (100, 99)}, POLICY)
    assert answer is not None and answer.label == "a" and answer.confidence > 0.95


def test_below_similarity_falls_to_topk_agreement():
    records = {"a": (100, 99)}
    agree = [n("a", 0.91), n("a", 0.90), n("a", 0.88), n("b", 0.8)]
    assert decide(agree, records, POLICY).label == "a"
    split = [n("a", 0.91), n("b", 0.90), n("a", 0.88)]
    assert decide(split, records, POLICY) is None
    weak = [n("a", 0.85), n("a", 0.84), n("a", 0.80)]
    assert decide(weak, records, POLICY) is None
    assert decide(agree, {"a": (100, 60)}, POLICY) is None  # agreement needs a record too


def test_proposal_ignores_track_record():
    proposal = propose([n("a", 0.95, "x")], POLICY)
    assert proposal is not None and proposal.label == "a" and "x" in proposal.reason


def test_no_neighbours():
    assert decide([], {}, POLICY) is None


def _record(labels: list[str], proposed: list[str], ids: list[str]) -> CacheTrackRecord:
    neighbours = [[n(p, 0.99)] for p in proposed]
    return CacheTrackRecord(
        neighbours=neighbours, labels=labels, policy=POLICY,
        seeds=track_record_seeds(neighbours, labels, POLICY),
        answers=out_of_fold_answers(neighbours, labels, cache_folds(ids), POLICY))


def test_folds_are_stable_and_balanced():
    ids = [f"t{i}" for i in range(1000)]
    folds = cache_folds(ids)
    assert folds == cache_folds(list(ids))
    assert cache_folds(ids[::-1]) == folds[::-1]  # a ticket's fold ignores the row order
    assert all(150 < folds.count(f) < 250 for f in range(5))


def test_the_gate_is_judged_out_of_fold():
    # 30 right proposals of "a": the whole set's record (30/30, bound 0.905) would let every
    # one through, but judged on the other folds' ~24 each, none passes.
    rec = _record(["a"] * 30, ["a"] * 30, [f"a{i}" for i in range(30)])
    assert rec.seeds == {"a": (30, 30)}
    assert decide(rec.neighbours[0], rec.seeds, POLICY) is not None
    assert rec.answers == [None] * 30
    assert rec.metrics()["cache_hits"] == 0.0 and rec.metrics()["cache_wrong_hit_bound"] == 1.0


def test_hits_and_wrong_hits_gptcache_style():
    labels = ["a"] * 300 + ["b"] * 100
    proposed = ["a"] * 297 + ["b"] * 3 + ["b"] * 100  # 3 "a" tickets proposed as "b"
    rec = _record(labels, proposed, [f"t{i}" for i in range(400)])
    m = rec.metrics()
    assert m["cache_hits"] == 400 and m["cache_wrong_hits"] == 3
    assert m["cache_hit_rate"] == 1.0 and m["cache_wrong_hit_rate"] == pytest.approx(3 / 400)
    assert 3 / 400 < m["cache_wrong_hit_bound"] < 0.03
    assert rec.answer(299) == "b" and rec.answer(0) == "a"


def test_evaluation_counts_cache_hits_and_wrong_hits():
    def d(label, stage):
        return Decision(ticket_id="t", label=label, department=label, confidence=0.9,
                        stage=stage, model_version="m")

    decisions = [d("a", "cache"), d("b", "cache"), d("a", "cache"), d("a", "classifier"),
                 d(None, "review")]
    truths = ["a", "a", "zzz", "a", "a"]  # a wrong hit, and a hit on an out-of-scope ticket
    r = score(decisions, truths, known={"a", "b"}, departments={})
    assert (r["cache_hits"], r["cache_wrong_hits"]) == (3, 2)
    assert r["cache_hit_rate"] == 0.6 and r["cache_wrong_hit_rate"] == round(2 / 3, 4)
    assert 2 / 3 < r["cache_wrong_hit_bound"] <= 1.0
    none = score([d("a", "classifier")], ["a"], known={"a"}, departments={})
    assert none["cache_hits"] == 0 and none["cache_wrong_hit_bound"] == 1.0

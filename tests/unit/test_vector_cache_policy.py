from cascade.vector_cache import CachePolicy, decide, propose, track_record
from cca.tickets import Neighbour

POLICY = CachePolicy(min_similarity=0.92, min_track_record=0.85, topk_agree=3,
                     topk_min_confidence=0.85, prior_strength=2.0)


def n(label: str, sim: float, tid: str = "t") -> Neighbour:
    return Neighbour(ticket_id=tid, label=label, similarity=sim)


def test_track_record_prior_keeps_unproven_labels_out():
    assert track_record(0, 0, 2.0) == 0.5
    assert track_record(98, 97, 2.0) > 0.97


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

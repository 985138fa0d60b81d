from cca.tickets import Decision
from evaluation.cascade_eval import score


def d(label, stage="classifier"):
    return Decision(ticket_id="t", label=label, department={"a": "X", "b": "Y"}.get(label),
                    confidence=0.9, stage=stage, model_version="m")


def test_review_is_wrong_unless_out_of_scope():
    decisions = [d("a"), d("b"), d(None, "review"), d(None, "review"), d("a", "cache")]
    truths = ["a", "a", "b", "zzz", "a"]
    r = score(decisions, truths, known={"a", "b"}, departments={"a": "X", "b": "Y"})
    assert r["n"] == 5
    assert r["accuracy"] == 0.6  # a ok, b wrong, review wrong, OOS review right, cache ok
    assert r["auto_coverage"] == 0.6
    assert r["auto_accuracy"] == round(2 / 3, 4)
    assert r["department_accuracy"] == 0.6
    assert r["stage_share"]["review"] == 0.4 and r["stage_share"]["cache"] == 0.2
    assert r["out_of_scope"] == 1

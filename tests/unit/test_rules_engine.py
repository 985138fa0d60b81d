from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cca.errors import ConfigError
from cca.tickets import Ticket
from evaluation.rules_eval import evaluate_rules
from rules import load_rules
from tests.conftest import ROOT

BANKING = ROOT / "rules" / "banking.yaml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_banking_rules_load_with_at_least_ten_route_rules():
    rs = load_rules(BANKING)
    assert sum(r.spec.kind == "route" for r in rs.rules) >= 10


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Can I use Apple Pay with this card?", "apple_pay_or_google_pay"),
        ("My PIN is blocked after three tries", "pin_blocked"),
        ("How do I change my PIN?", "change_pin"),
        ("contactless payments stopped working", "contactless_not_working"),
        ("what is the minimum age to open an account", "age_limit"),
        ("I want to close my account", "terminate_account"),
    ],
)
def test_banking_rules_route(text, label):
    hit = load_rules(BANKING).apply(Ticket(id="t", body=text))
    assert hit.label == label and hit.confidence >= 0.9


def test_rules_do_not_fire_on_negated_context():
    rs = load_rules(BANKING)
    assert rs.apply(Ticket(id="t", body="I forgot my PIN, how do I change it?")).label is None
    assert rs.apply(Ticket(id="t", body="my automatic top-up failed")).label is None


def test_urgency_and_sla_breach_from_priority_and_age():
    rs = load_rules(BANKING)
    now = datetime(2026, 1, 2, tzinfo=UTC)
    fresh = Ticket(id="a", body="my card was stolen", created_at=now - timedelta(minutes=5))
    assert rs.apply(fresh, now=now).urgency == "high"
    assert not rs.apply(fresh, now=now).sla_breach
    old = Ticket(id="b", body="question about fees", priority="high",
                 created_at=now - timedelta(hours=5))
    hit = rs.apply(old, now=now)
    assert hit.sla_breach and hit.urgency == "critical"
    assert rs.apply(old.model_copy(update={"priority": "low"}), now=now).sla_breach is False


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("rules: [\n  - id: x\n", "malformed YAML: line"),
        ("rules:\n  - id: a\n    label: l\n    when: {regex: '('}\n", "rule 'a': invalid regex"),
        ("rules:\n  - id: a\n    label: l\n    when: {colour: red}\n",
         "unknown condition 'colour'"),
        ("rules:\n  - id: a\n    when: {keyword: x}\n", "rule 'a'"),
        ("rules:\n  - id: a\n    label: l\n    when: {keyword: x}\n"
         "  - id: a\n    label: m\n    when: {keyword: y}\n", "duplicate rule id"),
        ("rules:\n  - id: a\n    label: l\n    confidence: 2\n    when: {keyword: x}\n",
         "confidence"),
        ("rules:\n  - label: l\n    when: {keyword: x}\n", "rule #1"),
        ("rules: []\n", "rules"),
        ("rules:\n  - id: a\n    label: l\n    when: {priority_in: [urgentish]}\n",
         "unknown priority"),
    ],
)
def test_bad_rule_file_names_file_rule_and_reason(tmp_path, body, expected):
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as exc:
        load_rules(path)
    assert str(path) in str(exc.value)
    assert expected in str(exc.value)
    assert "\n" not in str(exc.value)


def test_all_any_not_combinators(tmp_path):
    path = write(
        tmp_path,
        "rules:\n  - id: r\n    label: L\n    confidence: 0.9\n    when:\n"
        "      all: [{keyword: card}, {any: [{keyword: lost}, {phrase: went missing}]}]\n"
        "      not: [{keyword: found}]\n",
    )
    rs = load_rules(path)
    assert rs.apply(Ticket(id="1", body="My card went  missing")).label == "L"
    assert rs.apply(Ticket(id="2", body="lost card, found it again")).label is None
    assert rs.apply(Ticket(id="3", body="lost my phone")).label is None
    assert rs.apply(Ticket(id="4", body="cardinal lost")).label is None  # whole words only


def test_rule_evaluation_counts_every_firing_rule():
    rs = load_rules(BANKING)
    tickets = [Ticket(id="1", body="Does Google Pay work?"),
               Ticket(id="2", body="Is Apple Pay supported here?")]
    stats = {s.rule_id: s for s in evaluate_rules(rs, tickets, ["apple_pay_or_google_pay",
                                                                "card_acceptance"])}
    assert stats["wallet-pay"].hits == 2
    assert stats["wallet-pay"].precision == 0.5
    assert stats["wallet-pay"].wrong_labels == {"card_acceptance": 1}

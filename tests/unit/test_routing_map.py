"""The routing map analysts edit (rules/routing.yaml) and the note agents read."""

from __future__ import annotations

from pathlib import Path

import pytest

from cca.departments import load_department_map
from cca.errors import ConfigError
from cca.package_data import data_path
from cca.tickets import Decision, Neighbour
from pipelines.integrations.mapping import load_routing_map
from pipelines.integrations.note import marker_for, routing_note


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_map_names_exactly_the_banking77_departments() -> None:
    routing = load_routing_map(data_path("rules", "routing.yaml"))
    departments = set(load_department_map(
        data_path("rules", "departments", "banking77.yaml")).mapping.values())
    routing.check_departments(departments)
    for vendor in ("servicenow", "zendesk", "jira"):
        assert set(routing.vendor(vendor).groups) == departments
        assert routing.vendor(vendor).review_group
    assert routing.vendor("jira").group_field == "customfield_10010"


def test_unknown_department_is_one_line_naming_it(tmp_path: Path) -> None:
    routing = load_routing_map(write(tmp_path, "zendesk:\n  departments: {Cardz: 1, Fees: 2}\n"))
    with pytest.raises(ConfigError) as err:
        routing.check_departments({"Cards", "Fees"})
    message = str(err.value)
    assert "\n" not in message and "Cardz" in message and "Cards" in message


@pytest.mark.parametrize(("text", "words"), [
    ("zendesk: [1, 2]\n", "must be a mapping"),
    ("zendesk:\n  departments: {Cards: [1]}\n", "names to ids"),
    ("zendesk:\n  urgency: {urgent: urgent}\n", "urgent"),
    ("zendesk:\n  groups: {Cards: 1}\n", "unknown key"),
    ("jira:\n  departments: {Cards: '11'}\n", "group_field"),
    ("freshdesk: {}\n", "unknown key"),
    ("zendesk: {departments: {Cards: 1}\n", "malformed YAML"),
])
def test_malformed_maps_are_one_line_errors(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_routing_map(write(tmp_path, text))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_back_maps_a_group_to_a_label_or_department_only_when_unambiguous(
        tmp_path: Path) -> None:
    routing = load_routing_map(write(tmp_path, (
        "zendesk:\n  departments: {Cards: 1, Fees: 2, Fraud: 2}\n"
        "  labels: {lost_card: 9, stolen_card: 8, card_arrival: 1}\n")))
    zd = routing.vendor("zendesk")
    assert zd.back("9") == ("lost_card", None)
    assert zd.back("1") == ("card_arrival", "Cards")
    assert zd.back("2") == (None, None)  # two departments share the group
    assert zd.back("5") == (None, None)
    assert zd.group_for("lost_card", "Cards") == "9"
    assert zd.group_for("card_arrival", "Cards") == "1"
    assert zd.group_for("other", "Fees") == "2" and zd.group_for(None, None) is None


def test_note_says_why_and_names_neighbours_by_id_only() -> None:
    decision = Decision(
        ticket_id="zendesk-1", label="card_arrival", department="Cards", confidence=0.91,
        stage="cache", model_version="m7", reason="3 of 3 neighbours agree",
        top_classes=[("card_arrival", 0.91), ("card_delivery_estimate", 0.05),
                     ("lost_or_stolen_card", 0.02), ("pin_blocked", 0.01)],
        neighbours=[Neighbour(ticket_id="zendesk-9", label="card_arrival", similarity=0.97)])
    marker = marker_for("zendesk-abc")
    note = routing_note(decision, marker, review=False)
    assert "Stage: cache" in note and "confidence 0.91" in note
    assert "card_delivery_estimate 0.05" in note and "pin_blocked" not in note  # top three
    assert "zendesk-9 (card_arrival, 0.97)" in note and note.endswith(marker)
    review = routing_note(decision.model_copy(update={"stage": "review", "label": None}),
                          marker, review=True)
    assert "needs a person" in review and "Top classes: card_arrival 0.91" in review

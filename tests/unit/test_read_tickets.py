import json

import pytest

from cca.errors import InputError
from pipelines.read_tickets import Columns, read_ticket_file
from tests.conftest import FIXTURES

COLS = Columns(text="message", label="intent", id="ticket_id", subject="subject",
               priority="priority")


def test_fixture_reads_with_ids_subjects_and_priorities():
    parsed = read_ticket_file(FIXTURES / "service_desk.csv", COLS)
    assert len(parsed.tickets) == 48 and not parsed.rejects
    first = parsed.tickets[0]
    assert first.id == "SD-001" and first.subject == "Password"
    assert first.text.startswith("Password\nI forgot")
    assert parsed.labels["SD-026"] == "delivery_delay"
    assert {t.priority for t in parsed.tickets} == {"low", "normal", "high"}


def test_derived_ids_are_stable_and_collapse_identical_rows(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("text,label\nhello there,a\nhello there,a\nbye,b\n")
    one = read_ticket_file(p, Columns(text="text", label="label"))
    two = read_ticket_file(p, Columns(text="text", label="label"))
    assert [t.id for t in one.tickets] == [t.id for t in two.tickets]
    assert len(one.tickets) == 2 and one.duplicates == 1
    kept = read_ticket_file(p, Columns(text="text", label="label"), collapse_duplicates=False)
    assert len(kept.tickets) == 3


def test_jsonl(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps({"body": "card lost", "y": "lost"}) + "\n\n"
                 + json.dumps({"body": "pin", "y": "pin"}) + "\n")
    parsed = read_ticket_file(p, Columns(text="body", label="y"))
    assert [parsed.labels[t.id] for t in parsed.tickets] == ["lost", "pin"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"words,label\nhi,a\n", "no column 'text'"),
    ],
)
def test_file_level_errors(tmp_path, content, message):
    p = tmp_path / "bad.csv"
    p.write_bytes(content)
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        read_ticket_file(p, Columns(text="text", label="label"))


def test_invalid_utf8_rejects_only_its_record(tmp_path):
    p = tmp_path / "mixed.csv"
    p.write_bytes(b"text,label\nfine,a\n\xff\xfe,a\nalso fine,b\n")
    parsed = read_ticket_file(p, Columns(text="text", label="label"))
    assert [t.body for t in parsed.tickets] == ["fine", "also fine"]
    assert [(r.line, r.reason) for r in parsed.rejects] == [(3, "not valid UTF-8 in 'text'")]


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_ticket_file(tmp_path / "nope.csv", Columns())
    (tmp_path / "x.xlsx").write_text("x")
    with pytest.raises(InputError, match="unsupported file type"):
        read_ticket_file(tmp_path / "x.xlsx", Columns())


def test_record_level_rejects_carry_line_and_reason(tmp_path):
    p = tmp_path / "t.csv"
    big = "x" * 100_000
    p.write_text(
        "id,text,label\n"
        "1,fine,a\n"
        "2,   ,a\n"
        f"3,{big},a\n"
        "1,again,a\n"
        "4,no label,\n"
        "5,\"nul\x00byte\",a\n"
    )
    parsed = read_ticket_file(p, Columns(text="text", label="label", id="id"), max_chars=20_000)
    reasons = {r.line: r.reason for r in parsed.rejects}
    assert [t.id for t in parsed.tickets] == ["1"]
    assert "empty" in reasons[3]
    assert "100000 characters" in reasons[4]
    assert "duplicate id '1' (first at line 2)" in reasons[5]
    assert "missing label" in reasons[6]
    assert "NUL" in reasons[7]


def test_a_file_taken_whole_is_refused_with_the_first_reason(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("text,label\nok,a\n ,a\n,b\n")
    parsed = read_ticket_file(p, Columns(text="text", label="label"))
    with pytest.raises(InputError, match=r"line 3: empty or missing text.*\(and 1 more\); "
                                         r"nothing imported$"):
        parsed.refuse_if_rejected("nothing imported")


def test_malformed_jsonl_line_is_a_reject(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"text": "ok", "label": "a"}\n{"text": \n["list"]\n')
    parsed = read_ticket_file(p, Columns(text="text", label="label"))
    assert len(parsed.tickets) == 1
    assert [r.line for r in parsed.rejects] == [2, 3]


def test_conflicting_labels_for_identical_text(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("text,label\nsame words,a\nsame words,b\n")
    parsed = read_ticket_file(p, Columns(text="text", label="label"))
    assert "conflicting label" in parsed.rejects[0].reason

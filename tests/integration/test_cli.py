"""The ``cca`` commands as a user runs them: outputs, reports, and one-line errors."""

import json

import pytest
import sqlalchemy as sa

from cca.store.audit import last_decision, text_hash
from tests.conftest import FIXTURES
from tests.integration.conftest import run_cli

FIXTURE_ARGS = ["--text-col", "message", "--label-col", "intent"]


def assert_one_line_error(result, code: int, fragment: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]


@pytest.fixture(scope="module")
def trained_cli(settings, db):
    result = run_cli(settings, "train", "--data", str(FIXTURES / "service_desk.csv"),
                     *FIXTURE_ARGS, "--departments", str(settings.department_map))
    assert result.returncode == 0, result.stderr
    assert "trained clf-" in result.stderr
    return result


def test_evaluate_writes_report_and_predictions(settings, trained_cli, tmp_path):
    out, preds = tmp_path / "r.json", tmp_path / "p.jsonl"
    result = run_cli(settings, "evaluate", "--data", str(FIXTURES / "service_desk.csv"),
                     *FIXTURE_ARGS, "--json", str(out), "--predictions", str(preds))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    for key in ("n", "accuracy", "macro_f1", "department_accuracy", "auto_coverage",
                "auto_accuracy", "stage_share", "latency_ms", "throughput_per_s",
                "cost_per_ticket_usd"):
        assert key in report
    assert report["n"] == 48
    assert set(report["stage_share"]) == {"rules", "cache", "classifier", "llm", "review"}
    assert abs(sum(report["stage_share"].values()) - 1) < 1e-3
    assert set(report["latency_ms"]) == {"p50", "p95", "p99"}
    assert report["top1_accuracy"] >= 0.9  # these are its own training tickets
    table = {row["class"]: row for row in report["per_class"]}
    assert set(table) == {"billing_question", "cancel_subscription", "delivery_delay",
                          "password_reset"}
    # 48 tickets: no class earned a bound (the test settings use the common threshold)
    assert {row["status"] for row in table.values()} == {"review"}
    assert sum(row["tickets"] for row in table.values()) == 48
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert len(lines) == 48
    assert {"text", "label", "predicted", "stage", "confidence"} <= set(lines[0])
    assert all((x["predicted"] is None) == (x["stage"] == "review") for x in lines)


def test_classify_prints_route_and_audits(settings, db, trained_cli):
    text = "I forgot my password"
    result = run_cli(settings, "classify", text, "--json")
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision["stage"] == "rules" and decision["label"] == "password_reset"
    assert decision["department"] == "Accounts"
    with db.begin() as conn:  # the decision printed is the one in the audit, without the text
        logged = last_decision(conn, decision["ticket_id"])
        row = conn.execute(sa.text("SELECT text_hash, details::text AS details FROM decisions "
                                   "WHERE ticket_id = :t"), {"t": decision["ticket_id"]}).first()
    assert logged is not None and row is not None, "the decision printed was not audited"
    assert (logged.stage, logged.label) == ("rules", "password_reset")
    assert logged.model_version == decision["model_version"]
    assert logged.details["rule_id"] == decision["rule_id"]
    assert row.text_hash == text_hash(text) and text not in row.details


def test_rules_evaluate_shows_hits_and_precision(settings):
    result = run_cli(settings, "rules", "evaluate", "--data",
                     str(FIXTURES / "service_desk.csv"), *FIXTURE_ARGS)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "forgot-password" in line)
    assert "password_reset" in row and "1.000" in row
    assert "route rules:" in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["import", "missing.csv", "--text-col", "x"], 2, "no such file"),
        (["import", str(FIXTURES / "service_desk.csv"), "--text-col", "body"], 2,
         "no column 'body'"),
        (["classify", "   "], 2, "ticket text is empty"),
        (["classify", "x" * 100_000], 2, "100000 characters"),
        (["classify"], 2, "give either a ticket text or --file"),
        (["feedback", "SD-001", "no_such_label"], 2, "unknown label 'no_such_label'"),
        (["evaluate", "--data", str(FIXTURES / "service_desk.csv"), "--text-col", "message",
          "--label-col", "nope"], 2, "no column 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(settings, trained_cli, args, code, fragment):
    assert_one_line_error(run_cli(settings, *args), code, fragment)


def test_invalid_utf8_and_malformed_rules(settings, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"message,intent\nok,a\n\xc3\x28,b\n")
    assert_one_line_error(run_cli(settings, "import", str(bad), *FIXTURE_ARGS), 2,
                          "line 3: not valid UTF-8 in 'message'; nothing imported")
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - id: x\n    label: y\n    when: {regex: '[unclosed'}\n")
    assert_one_line_error(run_cli(settings, "rules", "check", "--rules", str(rules)), 2,
                          "rule 'x': invalid regex")


def test_bad_setting_is_one_line(settings):
    result = run_cli(settings, "rules", "check", CCA_CACHE_TOP_K="many")
    assert_one_line_error(result, 2, "CCA_CACHE_TOP_K")


def test_skipped_records_are_quarantined_and_listed(settings, tmp_path):
    bad = tmp_path / "partly_bad.csv"
    bad.write_text("message,intent\nmy parcel is late again,delivery_delay\n,delivery_delay\n")
    result = run_cli(settings, "import", str(bad), *FIXTURE_ARGS, "--skip-invalid")
    assert result.returncode == 0, result.stderr
    assert "1 rejected" in result.stderr
    listed = run_cli(settings, "quarantine", "--stage", "import")
    assert listed.returncode == 0, listed.stderr
    assert "partly_bad.csv:3" in listed.stdout and "empty or missing text" in listed.stdout

"""``cca sanitize IN OUT`` end to end in a subprocess: subject and body redacted, other fields
kept, customer ids pseudonymised with the home's key, bad input a one-line error (exit 2)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cca.settings import Settings
from tests.integration.conftest import run_cli


def test_sanitize_redacts_subject_and_body(settings: Settings, tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out" / "redacted.jsonl"
    records = [
        {"id": "t1", "subject": "Card 4111 1111 1111 1111 stolen",
         "body": "Hi, my name is Sarah Thompson, call me on +44 7700 900123 or email "
                 "sarah@example.com. Customer CUST-204518.",
         "customer_ref": "CUST-204518", "label": "lost_or_stolen_card"},
        {"id": "t2", "subject": "Refund", "body": "I paid £100.50 with card ending 1234.",
         "label": "request_refund"},
        {"id": "t3", "body": "Customer CUST-204518 again, IBAN GB82 WEST 1234 5698 7654 32"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")

    proc = run_cli(settings, "sanitize", str(src), str(dst))

    assert proc.returncode == 0, proc.stderr
    assert "sanitized 3 records" in proc.stderr
    out = [json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in out] == ["t1", "t2", "t3"]
    assert out[0]["subject"] == "Card <CARD> stolen"
    body = out[0]["body"]
    for placeholder in ("<PERSON>", "<PHONE>", "<EMAIL>"):
        assert placeholder in body
    for secret in ("Sarah", "7700", "sarah@example.com", "204518"):
        assert secret not in body
    assert out[0]["customer_ref"] == "CUST-204518" and out[0]["label"] == "lost_or_stolen_card"
    assert out[1] == records[1]  # amounts and card last-4 survive
    assert "<IBAN>" in out[2]["body"]
    token = re.search(r"<CUSTOMER:([0-9a-f]{10})>", body)
    assert token and f"<CUSTOMER:{token.group(1)}>" in out[2]["body"]  # one customer, one token
    assert (settings.secrets_dir / "pii_hmac.key").exists()


def test_sanitize_bad_line_is_one_line_error(settings: Settings, tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"body": "fine"}\n{"body": oops}\n', encoding="utf-8")

    proc = run_cli(settings, "sanitize", str(src), str(dst))

    assert proc.returncode == 2
    assert "line 2" in proc.stderr and "Traceback" not in proc.stderr
    assert not dst.exists()


def test_sanitize_missing_input(settings: Settings, tmp_path: Path) -> None:
    proc = run_cli(settings, "sanitize", str(tmp_path / "nope.jsonl"), str(tmp_path / "o.jsonl"))
    assert proc.returncode == 2
    assert "nope.jsonl" in proc.stderr

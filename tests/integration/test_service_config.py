"""The service under other settings: tight rate limits, shadow mode with a @challenger, and a
start while the MLflow registry is unreachable (the last good copy serves)."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa

from cca.settings import Settings
from cca.store import open_database
from tests.integration.service_harness import BASE_ENV, service, ticket, token


def _settings(home) -> Settings:
    return Settings(home=home, rules_path=BASE_ENV["CCA_RULES_PATH"],
                    department_map=BASE_ENV["CCA_DEPARTMENT_MAP"])


def test_rate_limit_answers_429_with_retry_after(service_home):
    home = service_home
    with service(home, CCA_RATE_LIMIT_PER_S="0.5", CCA_RATE_LIMIT_BURST="2") as c:
        h = token(home, "classify", subject="greedy-client")
        answers = [c.post("/classify", json=ticket("I forgot my password"), headers=h)
                   for _ in range(4)]
        refused = [r for r in answers if r.status_code == 429]
        assert refused, [r.status_code for r in answers]
        assert int(refused[0].headers["retry-after"]) >= 1
        assert "rate limit" in refused[0].json()["error"]
        other = c.post("/classify", json=ticket("I forgot my password"),
                       headers=token(home, "classify", subject="polite-client"))
        assert other.status_code == 200
        assert "cca_rate_limited_total" in c.get("/metrics").text


def test_shadow_mode_logs_the_challenger_and_reports(service_home):
    from training.steps import evaluate_candidate, register_candidate, train_candidate

    s = _settings(service_home)
    db = open_database(s)
    try:
        registered = register_candidate(evaluate_candidate(train_candidate(s, db), s, db), s, db)
        assert registered.model_version
        with service(service_home, CCA_SERVE_SHADOW="true") as c:
            status = c.get("/status", headers=token(service_home, "admin")).json()
            assert status["challenger"]["alias"] == "challenger", status
            h = token(service_home, "classify", "feedback")
            ids = []
            for text in ("my parcel is late again", "cancel my subscription now",
                         "why was I billed twice", "zxqv blorp"):
                r = c.post("/classify", json=ticket(text), headers=h)
                assert r.status_code == 200
                ids.append(r.json()["decision"]["ticket_id"])
            # Shadow runs never change the answer and land in shadow_decisions.
            for _ in range(100):
                with db.begin() as conn:
                    n = conn.execute(sa.text("SELECT count(*) FROM shadow_decisions "
                                             "WHERE ticket_id = ANY(:i)"), {"i": ids}).scalar()
                if n == len(ids):
                    break
                time.sleep(0.05)
            assert n == len(ids)
            assert c.post("/feedback", json={"ticket_id": ids[0], "label": "delivery_delay"},
                          headers=h).status_code == 200
        from tests.integration.conftest import run_cli

        out = run_cli(s, "shadow", "report", "--json")
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["compared"] >= len(ids)
        pair = report["pairs"][0]
        assert 0 <= pair["agreement"] <= 1 and pair["with_feedback"] >= 1
        assert pair["champion_accuracy"] is not None
    finally:
        db.dispose()


def test_mlflow_down_serves_the_last_good_copy(service_home):
    with service(service_home, CCA_MLFLOW_TRACKING_URI="http://127.0.0.1:9",
                 MLFLOW_HTTP_REQUEST_TIMEOUT="2") as c:
        status = c.get("/status", headers=token(service_home, "admin")).json()
        assert status["champion"]["source"] == "last good copy", status
        r = c.post("/classify", json=ticket("I forgot my password"),
                   headers=token(service_home, "classify"))
        assert r.status_code == 200


@pytest.mark.parametrize("scope", ["classify", "feedback"])
def test_token_cli_mints_a_usable_token(service_home, scope):
    from tests.integration.conftest import run_cli

    out = run_cli(_settings(service_home), "token", "--scope", scope)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1].count(".") == 2

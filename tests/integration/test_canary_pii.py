"""Canary PII through the whole product, then a search of every output: nothing leaks.

Tickets carrying a person's name, e-mail, phone, card number, IBAN, street address and a
customer reference (tests/pii_canary.py: distinctive values found nowhere else) go through
the main job's steps as commands (``cca ingest`` with bad records for the quarantine, ``cca
train`` preparing them first (a ticket fails a Great Expectations suite) and retraining into
MLflow, ``cca evaluate`` writing its reports, ``cca quarantine``) and through ``cca
serve`` (classify, a refused request, explain with an LLM explanation through a recording
proxy, feedback, a Zendesk webhook routed and written back, an erasure, ``/metrics``).

Then every output is searched (tests/pii_canary.py: case-insensitive, URL-decoded,
HTML-unescaped, digits-only for card and phone, distinctive fragments): the commands'
stdout and stderr, the ``cca serve`` log, every file under ``CCA_HOME`` (reports, Data Docs,
spool, MLflow store and artifacts, models, the embedded PostgreSQL's server log), every
MLflow run through the client API, every request body the LLM received, and the metrics page.

Raw text is meant to stay in PostgreSQL until retention, in the columns listed in
``RAW_COLUMNS``; the last test checks that no other column holds a canary. Outside this scan:
the ticket file itself (moved to ``inbox/processed/``, the input, purged by retention) and
the answers the API gives the caller who sent the text.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from cca.settings import Settings
from cca.store import open_database
from tests import pii_canary as canary
from tests.conftest import FIXTURES, ROOT, wait_until
from tests.fake_openai import FakeOpenAI
from tests.integration.conftest import cli_env, run_cli
from tests.integration.serve_process import stop_tree
from tests.integration.service_harness import BASE_ENV, token
from tests.recording_proxy import RecordingProxy
from tests.servers import free_port
from tests.standins.zendesk import ZendeskStandIn

# The module's fixture runs the main job and a service: minutes on a loaded machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

FUTURE = "2099-01-01T09:00:00+00:00"  # created_at in the future: the raw suite refuses it
# (table, column) holding raw ticket text or a customer reference until retention/erasure.
RAW_COLUMNS = {
    ("tickets", "subject"), ("tickets", "body"), ("tickets", "customer_ref"),
    ("tickets", "metadata"),  # the caller's free-form fields (a reporter's e-mail…)
    ("quarantine", "payload"), ("intake_events", "payload"),
}
GROUPS = {5000, 5001, 5002, 5003, 5011}


@dataclass
class Outputs:
    settings: Settings
    streams: dict[str, str] = field(default_factory=dict)  # command -> stdout + stderr
    serve_log: Path = Path()
    llm_bodies: list[str] = field(default_factory=list)
    metrics: str = ""
    inputs: list[Path] = field(default_factory=list)  # the files handed to the product


def _rows(extra: list[dict[str, str]]) -> list[dict[str, str]]:
    with open(FIXTURES / "service_desk.csv", newline="", encoding="utf-8") as f:
        rows = [dict(r) for r in csv.DictReader(f)]
    return rows + extra


def _csv(rows: list[dict[str, str]]) -> str:
    cols = ["ticket_id", "subject", "message", "intent", "priority", "customer_ref",
            "created_at"]
    out = io.StringIO()
    writer = csv.DictWriter(out, cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _canary_rows() -> list[dict[str, str]]:
    """The canary tickets, two records ingest refuses, and one the raw suite refuses."""
    rows = [{"ticket_id": f"CANARY-{i}", "subject": subject, "message": body, "intent": label,
             "priority": "normal", "customer_ref": canary.CUSTOMER if i == 5 else ""}
            for i, (subject, body, label) in enumerate(canary.canary_texts())]
    rows += [
        # no text: refused by ingest, quarantined with its payload
        {"ticket_id": "CANARY-BAD-1", "subject": f"{canary.PERSON} {canary.PHONE}",
         "message": "", "intent": "billing_question", "priority": "normal"},
        # a shifted column: the e-mail where the priority should be
        {"ticket_id": "CANARY-BAD-2", "subject": "Invoice", "message": f"Card {canary.CARD} "
         "was charged twice on my invoice", "intent": "billing_question",
         "priority": canary.EMAIL},
        # created in the future: the raw tickets suite quarantines it, with a Data Docs page
        {"ticket_id": "CANARY-FUTURE", "subject": "Invoice", "message": f"I am {canary.PERSON}"
         f", IBAN {canary.IBAN}, my invoice is wrong", "intent": "billing_question",
         "priority": "normal", "created_at": FUTURE},
    ]
    return rows


def _cli(out: Outputs, name: str, *args: str, ok: bool = True) -> str:
    started = time.perf_counter()
    done = run_cli(out.settings, *args)
    print(f"cca {name}: {time.perf_counter() - started:.1f} s")
    text = done.stdout + "\n" + done.stderr
    out.streams[f"cca {name}"] = text
    if ok:
        assert done.returncode == 0, f"cca {' '.join(args)}:\n{text[-3000:]}"
    return text


def _main_job(out: Outputs, tmp: Path) -> None:
    """The main job's steps as commands, on the canary tickets plus the fixture tickets."""
    s = out.settings
    s.inbox.mkdir(parents=True, exist_ok=True)
    inbox_file = s.inbox / "canary_desk.csv"
    inbox_file.write_text(_csv(_rows(_canary_rows())), encoding="utf-8")
    out.inputs.append(inbox_file.name)
    text = _cli(out, "ingest", "ingest")
    assert "2 quarantined" in text, text
    text = _cli(out, "train", "train")  # prepare (redact, dedup, validate, index), retrain
    assert "1 quarantined" in text, text  # CANARY-FUTURE, by the raw suite
    evaluation = tmp / "canary_eval.csv"
    evaluation.write_text(_csv(_rows([dict(r, ticket_id=f"E{r['ticket_id']}")
                                      for r in _canary_rows()[:6]])), encoding="utf-8")
    _cli(out, "evaluate", "evaluate", "--data", str(evaluation), "--text-col", "message",
         "--label-col", "intent", "--json", str(s.reports_dir / "canary_eval.json"),
         "--predictions", str(s.reports_dir / "canary_predictions.jsonl"))
    text = _cli(out, "quarantine", "quarantine")
    assert "ingest 2" in text and "validate 1" in text, text


@contextlib.contextmanager
def _serve(out: Outputs, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    out.serve_log = out.settings.home.parent / "serve.log"
    full = {k: v for k, v in cli_env(out.settings, **env).items()
            if not k.startswith(("BENTOML_", "PROMETHEUS_"))}
    with open(out.serve_log, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port)],
                                cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert proc.poll() is None, out.serve_log.read_text(errors="replace")[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            return False

        assert wait_until(ready, 300), out.serve_log.read_text(errors="replace")[-3000:]
        yield url
    finally:
        stop_tree(proc)


def _service_calls(out: Outputs, url: str, zd: ZendeskStandIn) -> None:
    home = out.settings.home
    auth = token(home, "classify", "feedback", "admin")
    texts = canary.canary_texts()
    meta = {"reporter": canary.PERSON, "reporter_email": canary.EMAIL}
    with httpx.Client(base_url=url, headers=auth, timeout=60) as c:
        for i, (subject, body, _) in enumerate(texts):
            r = c.post("/classify", json={"ticket": {
                "id": f"API-{i}", "subject": subject, "body": body, "metadata": meta,
                **({"customer_ref": canary.CUSTOMER} if i == 5 else {})}})
            assert r.status_code == 200, r.text
        r = c.post("/classify", json={"ticket": {"id": "API-BAD", "body": texts[0][1],
                                                 "priority": canary.EMAIL}})
        assert r.status_code == 422, r.text  # refused: the e-mail is not a priority
        r = c.post("/explain", json={"ticket": {"id": "API-EXPLAIN", "subject": texts[5][0],
                                                "body": texts[5][1]}, "llm_explanation": True})
        assert r.status_code == 200, r.text

        def explained() -> bool:
            return bool(c.get("/explanations/API-EXPLAIN").json()["explanations"])

        assert wait_until(explained, 30), "no LLM explanation was written"
        r = c.post("/feedback", json={"ticket_id": "API-0", "label": "billing_question"})
        assert r.status_code == 200, r.text
        tid = 900_000_000 + os.getpid() % 1_000_000
        zd.add_ticket(tid, texts[1][0] + f" ({canary.PERSON})", texts[1][1])
        headers, body = zd.webhook("created", tid)
        r = c.post("/webhooks/zendesk", content=body, headers=headers)
        assert r.status_code == 202, r.text
        assert wait_until(lambda: bool(zd.notes(tid)), 60), "the webhook's ticket not routed"
        r = c.post("/customers/erase", json={"customer_ref": canary.CUSTOMER})
        assert r.status_code == 200, r.text
        out.metrics = httpx.get(f"{url}/metrics", timeout=30).text


def _seed_embeddings(base: Settings, home: Path) -> None:
    """The embedding tables the session's home derived (once per session, as the other
    integration modules share them): deriving them again would cost a minute."""
    from cca.embeddings import get_deep_embedder, get_embedder

    get_embedder(base).embed(["warm up"])
    deep = get_deep_embedder(base)
    if deep is not None:
        deep.embed(["warm up"])
    shutil.copytree(base.home / "embeddings", home / "embeddings")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Iterator[Outputs]:
    tmp = tmp_path_factory.mktemp("canary")
    _seed_embeddings(settings, tmp / "home")
    settings = Settings(home=tmp / "home", rules_path=FIXTURES / "service_desk_rules.yaml",
                        department_map=FIXTURES / "service_desk_departments.yaml",
                        per_class_thresholds=False)
    out = Outputs(settings)
    db = open_database(settings)  # one embedded server for every command below
    try:
        _main_job(out, tmp)
        with FakeOpenAI() as llm, RecordingProxy(llm.base_url) as proxy, \
                ZendeskStandIn(groups=GROUPS) as zd:
            llm.reply = {"label": "billing_question", "confidence": 0.9,
                         "explanation": "asks about a charge on the invoice"}
            env = {"CCA_LLM_BASE_URL": proxy.base_url, "CCA_LLM_API_KEY": "sk-test",
                   "CCA_LLM_MODEL": "fake-model",
                   "CCA_ZENDESK_WEBHOOK_SECRET": zd.webhook_secret, "CCA_ZENDESK_URL": zd.url,
                   "CCA_ZENDESK_EMAIL": zd.user, "CCA_ZENDESK_TOKEN": zd.secret,
                   "CCA_ROUTING_PATH": str(FIXTURES / "routing_service_desk.yaml"),
                   "CCA_INTAKE_POLL_S": "0.05", **{k: v for k, v in BASE_ENV.items()}}
            with _serve(out, env) as url:
                _service_calls(out, url, zd)
            out.llm_bodies = [b.decode("utf-8", "replace") for b in proxy.bodies]
        assert out.llm_bodies, "the LLM was never asked: the scan of its requests is empty"
        yield out
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def scans(outputs: Outputs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """Every output searched once: output -> its canary hits."""
    s = outputs.settings
    inputs = [p for p in s.inbox.rglob("*") if p.name in outputs.inputs]
    pg_logs = [p for p in s.pgdata.rglob("*") if p.is_file() and (
        "log" in p.relative_to(s.pgdata).parts[:-1] or p.suffix == ".log")]
    files = canary.walk(s.home, skip=[s.pgdata, *inputs]) + pg_logs
    written = {p.relative_to(s.home).parts[0] for p in files}
    # What the steps wrote is there to be scanned (a renamed folder would shrink the scan).
    assert {"reports", "great_expectations", "mlflow", "models", "spool"} <= written, written
    assert list(s.ge_home.rglob("*.html")), "no Data Docs page was written"
    mlflow_hits, runs = canary.scan_mlflow(s.tracking_uri, tmp_path_factory.mktemp("mlflow"))
    assert runs >= 1
    log = outputs.serve_log.read_text(errors="replace")
    assert '"endpoint"' in log, log[-2000:]  # the service's JSON request lines are in it
    assert "cca_decisions_total" in outputs.metrics
    return {
        "commands": [h for name, text in outputs.streams.items()
                     for h in canary.find(name, text)],
        "serve log": canary.find("cca serve log", log),
        "llm": [h for i, body in enumerate(outputs.llm_bodies)
                for h in canary.find(f"LLM request {i}", body)],
        "metrics": canary.find("/metrics", outputs.metrics),
        "files": canary.scan_files(files),
        "mlflow": mlflow_hits,
    }


def _fail_on(hits: list[canary.Hit]) -> None:
    assert not hits, canary.report(hits)


@pytest.mark.parametrize("output", ["commands", "serve log", "llm", "metrics", "files",
                                    "mlflow"])
def test_no_canary_in(output: str, scans: dict[str, list]) -> None:
    _fail_on(scans[output])


def test_raw_text_stays_in_its_columns(outputs: Outputs) -> None:
    """The database is not scanned for leaks: raw text lives there until retention. But only
    in ``RAW_COLUMNS``: a canary in any other text column (decisions, audit, explanations,
    quarantine reasons…) is a copy that retention and erasure would not find."""
    import sqlalchemy as sa

    db = open_database(outputs.settings)
    found: set[tuple[str, str]] = set()
    patterns = [f"%{n}%" for needles in canary.NEEDLES.values() for n in needles]
    try:
        with db.begin() as conn:
            cols = conn.execute(sa.text("""
                SELECT table_name, column_name FROM information_schema.columns
                WHERE table_schema = 'public' AND data_type IN
                    ('text', 'character varying', 'jsonb', 'json', 'ARRAY')""")).all()
            for table, column in cols:
                hit = conn.execute(sa.text(
                    f'SELECT 1 FROM "{table}" WHERE lower("{column}"::text) LIKE ANY(:p) '
                    "LIMIT 1"), {"p": patterns}).first()
                if hit:
                    found.add((table, column))
    finally:
        db.dispose()
    print(f"columns holding a canary: {sorted(found)}")
    assert ("tickets", "body") in found  # the canaries did reach the store
    assert found <= RAW_COLUMNS, sorted(found - RAW_COLUMNS)

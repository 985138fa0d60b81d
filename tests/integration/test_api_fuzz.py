"""Schemathesis fuzzing of every operation in the service's own OpenAPI document.

The schema comes from the running in-process app (``/openapi.json``); cases are generated with
schemathesis' strategies (valid data, then invalid data) and sent through the module's
``TestClient`` (the one whose lifespan runs the service), each with a valid admin token. Every
answer must be a non-5xx; valid data must also get a documented status, content type and body.

Deterministic and bounded: Hypothesis derandomized, no example database, no shrinking,
``MAX_EXAMPLES`` per operation and mode.

No NUL characters are generated (``allow-x00 = false``): the service accepts NUL inside
``metadata`` and the audit record then never reaches PostgreSQL, which stalls the audit spool
of the session's shared home for every later module (see ``test_api_bad_input``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from tests.integration.service_harness import service, token

MAX_EXAMPLES = 40
BASE_URL = "http://testserver"
OPERATIONS = [("POST", "/classify"), ("POST", "/batch_classify"), ("POST", "/explain"),
              ("POST", "/feedback"), ("POST", "/customers/erase"), ("GET", "/status")]
# GET /status takes no input at all: there is nothing to make invalid.
CASES = [(m, p, mode) for m, p in OPERATIONS for mode in (GenerationMode.POSITIVE,
                                                           GenerationMode.NEGATIVE)
         if not (p == "/status" and mode is GenerationMode.NEGATIVE)]
# Server bugs the fuzzer finds get a strict xfail here (reason = the bug) until fixed.
BUGS: dict[tuple[str, str, GenerationMode], str] = {}


# Erasure deletes whatever the reference names in the shared home: fuzzed references get a
# prefix no other test's customer can canonicalise to.
REF_PREFIX = "zzfuzz-"

POSITIVE_CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
                   "response_schema_conformance", "response_headers_conformance")
NEGATIVE_CHECKS = ("not_a_server_error",)

FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
    phases=(Phase.explicit, Phase.generate), report_multiple_bugs=False, print_blob=False,
    suppress_health_check=list(HealthCheck))


def _case_params() -> list:
    out = []
    for m, p, g in CASES:
        kind = "valid" if g is GenerationMode.POSITIVE else "invalid"
        bug = BUGS.get((m, p, g))
        marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
        out.append(pytest.param(m, p, g, id=f"{m} {p} {kind}", marks=marks))
    return out


@pytest.fixture(scope="module")
def client(service_home: Path) -> Iterator[Any]:
    # Hundreds of requests in seconds from one client: lift the per-client rate limit.
    with service(service_home, CCA_RATE_LIMIT_PER_S="10000", CCA_RATE_LIMIT_BURST="10000") as c:
        yield c


@pytest.fixture(scope="module")
def auth(service_home: Path, client) -> dict[str, str]:
    return token(service_home, "admin", subject="fuzzer")


@pytest.fixture(scope="module")
def api_schema(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200, r.text
    config = schemathesis.Config.from_dict({"generation": {"allow-x00": False}})
    return schemathesis.openapi.from_dict(r.json(), config=config)


def _checks(names: tuple[str, ...]) -> list:
    return [getattr(schemathesis.checks, name) for name in names]


def _send(client, case, auth: dict[str, str]):
    """The generated request through the module's TestClient, with the admin token."""
    if case.path_parameters and "ref" in case.path_parameters:
        case.path_parameters["ref"] = REF_PREFIX + str(case.path_parameters["ref"])
    kw = case.as_transport_kwargs(base_url=BASE_URL, headers=auth)
    body: dict[str, Any] = {}
    if "json" in kw:
        body["json"] = kw["json"]
    elif kw.get("data") is not None:
        data = kw["data"]
        body["content"] = data.encode() if isinstance(data, str) else data
    headers = {k: v for k, v in (kw.get("headers") or {}).items() if v is not None}
    return client.request(kw["method"], kw["url"], params=kw.get("params") or None,
                          headers=headers, **body)


def test_schema_lists_every_operation(api_schema):
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert set(OPERATIONS) <= found, found


@pytest.mark.parametrize(("method", "path", "mode"), _case_params())
def test_fuzz(client, auth, api_schema, method: str, path: str, mode: GenerationMode):
    operation = api_schema[path][method]
    checks = _checks(POSITIVE_CHECKS if mode is GenerationMode.POSITIVE else NEGATIVE_CHECKS)
    seen: dict[int, int] = {}

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = _send(client, case, auth)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(response, checks=checks, headers=auth)  # first: no 5xx
        sent = f"{response.request.method} {response.request.url}: {response.text[:300]}"
        # The token went with every call: a 401/403 would mean it did not.
        assert response.status_code not in (401, 403), sent
        assert response.headers.get("x-request-id"), f"no x-request-id on {sent}"

    t0 = time.perf_counter()
    run()
    elapsed = time.perf_counter() - t0
    print(f"{method} {path} [{mode.value}]: {sum(seen.values())} calls in {elapsed:.1f}s, "
          f"statuses {dict(sorted(seen.items()))}")
    assert seen, "no case was generated"

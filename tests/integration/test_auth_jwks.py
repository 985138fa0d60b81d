"""RS256 bearer tokens against a real JWKS endpoint, and ``cca token`` end to end.

The JWKS server is a local stand-in for an identity provider (Keycloak, Entra ID, Auth0...):
``http.server`` on 127.0.0.1 in a thread, serving RSA public keys generated here with
``cryptography``; the test signs tokens with the matching private keys as the provider would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from cca.settings import Settings
from serving.auth import Authenticator, AuthError
from tests.conftest import ROOT


class IdentityProvider:
    """Serves ``/jwks.json`` with whatever keys are published; counts fetches."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.published: list[str] = []
        self.fetches = 0
        self.hang = threading.Event()  # set: requests stall (an overloaded provider)
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                if provider.hang.is_set():
                    time.sleep(5)
                jwks = {"keys": [dict(RSAAlgorithm.to_jwk(provider.keys[k].public_key(),
                                                          as_dict=True),
                                      kid=k, use="sig", alg="RS256")
                                 for k in provider.published]}
                body = json.dumps(jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def publish(self, kid: str) -> None:
        self.keys.setdefault(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        self.published.append(kid)

    def withdraw(self, kid: str) -> None:
        self.published.remove(kid)

    def sign(self, kid: str, key: rsa.RSAPrivateKey | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": "cca", "aud": "cca-api", "sub": "agent-7", "azp": "crm",
                   "iat": now, "exp": now + 300, "scope": "classify"} | claims
        return "Bearer " + jwt.encode(payload, key or self.keys[kid], algorithm="RS256",
                                      headers={"kid": kid})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    provider.publish("key-2025")
    yield provider
    provider.stop()


def rs_settings(home: Path, url: str) -> Settings:
    return Settings(home=home, auth_algorithm="RS256", auth_jwks_url=url, auth_secret=None,
                    auth_issuer="cca", auth_audience="cca-api")


def free_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/jwks.json"


def test_valid_token_and_key_cache(idp: IdentityProvider, tmp_path: Path) -> None:
    auth = Authenticator(rs_settings(tmp_path, idp.url))
    for _ in range(50):
        caller = auth.authenticate(idp.sign("key-2025"), "classify")
    assert (caller.subject, caller.client_id, caller.scopes) == ("agent-7", "crm", {"classify"})
    assert idp.fetches == 1  # fetched once, then served from the cache


def test_key_rotation(idp: IdentityProvider, tmp_path: Path) -> None:
    auth = Authenticator(rs_settings(tmp_path, idp.url), jwks_cooldown_s=0)
    assert auth.authenticate(idp.sign("key-2025"), "classify")
    idp.publish("key-2026")  # the provider starts signing with a new key
    assert auth.authenticate(idp.sign("key-2026"), "classify")
    assert idp.fetches == 2  # the unseen kid caused one refetch
    assert auth.authenticate(idp.sign("key-2025"), "classify")  # both valid during overlap


def test_withdrawn_key_stops_working_after_lifespan(idp: IdentityProvider, tmp_path: Path) -> None:
    auth = Authenticator(rs_settings(tmp_path, idp.url), jwks_lifespan_s=0.2, jwks_cooldown_s=0)
    assert auth.authenticate(idp.sign("key-2025"), "classify")
    idp.publish("key-2026")
    idp.withdraw("key-2025")
    time.sleep(0.3)
    with pytest.raises(AuthError) as info:
        auth.authenticate(idp.sign("key-2025"), "classify")
    assert info.value.status_code == 401 and "'key-2025' is not among" in info.value.message


def test_unknown_kid_refetches_at_most_once_per_cooldown(idp: IdentityProvider,
                                                         tmp_path: Path) -> None:
    auth = Authenticator(rs_settings(tmp_path, idp.url))  # default cooldown: 10 s
    assert auth.authenticate(idp.sign("key-2025"), "classify")
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for i in range(20):
        with pytest.raises(AuthError) as info:
            auth.authenticate(idp.sign(f"made-up-{i}", key=forger), "classify")
        assert info.value.status_code == 401 and "is not among" in info.value.message
    assert idp.fetches == 1  # within the cooldown: no refetch at all


def test_known_kid_wrong_key_is_forged(idp: IdentityProvider, tmp_path: Path) -> None:
    auth = Authenticator(rs_settings(tmp_path, idp.url))
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(AuthError, match="signature is invalid"):
        auth.authenticate(idp.sign("key-2025", key=forger, scope="admin"), "classify")


def test_provider_down_nothing_cached_is_503(tmp_path: Path) -> None:
    url = free_port_url()
    auth = Authenticator(rs_settings(tmp_path, url))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tok = jwt.encode({"iss": "cca", "aud": "cca-api", "sub": "x", "iat": int(time.time()),
                      "exp": int(time.time()) + 60}, key, "RS256", headers={"kid": "k"})
    with pytest.raises(AuthError) as info:
        auth.authenticate(f"Bearer {tok}", "classify")
    assert info.value.status_code == 503 and url in info.value.message
    assert "refused" in info.value.message.lower()
    assert info.value.headers.get("Retry-After")


def test_provider_down_cached_keys_keep_working(idp: IdentityProvider, tmp_path: Path) -> None:
    auth = Authenticator(rs_settings(tmp_path, idp.url), jwks_lifespan_s=0.1, jwks_cooldown_s=0)
    assert auth.authenticate(idp.sign("key-2025"), "classify")
    idp.keys["key-new"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp.stop()
    time.sleep(0.2)
    assert auth.authenticate(idp.sign("key-2025"), "classify")  # stale key, provider down
    with pytest.raises(AuthError) as info:
        auth.authenticate(idp.sign("key-new"), "classify")
    assert info.value.status_code == 503


def test_slow_provider_times_out(idp: IdentityProvider, tmp_path: Path) -> None:
    idp.hang.set()
    auth = Authenticator(rs_settings(tmp_path, idp.url))
    start = time.monotonic()
    with pytest.raises(AuthError) as info:
        auth.authenticate(idp.sign("key-2025"), "classify")
    assert info.value.status_code == 503 and "timed out" in info.value.message
    assert time.monotonic() - start < 3.5


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCA_")}
    env.update({"CCA_HOME": str(home), "CCA_NO_PROGRESS": "1", "COLUMNS": "200"})
    return subprocess.run([sys.executable, "-m", "cli.main", "token", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


def test_cli_token_round_trip(tmp_path: Path) -> None:
    proc = cli(tmp_path, "--scope", "classify", "--scope", "feedback", "--subject", "ops",
               "--ttl", "600")
    assert proc.returncode == 0, proc.stderr
    tok = proc.stdout.strip().splitlines()[-1]
    assert tok.count(".") == 2 and tok not in proc.stderr  # the token only on stdout
    assert "ops" in proc.stderr and "600s" in proc.stderr
    auth = Authenticator(Settings(home=tmp_path, auth_algorithm="HS256", auth_secret=None))
    caller = auth.authenticate(f"Bearer {tok}", "feedback")
    assert caller.subject == "ops" and caller.scopes == {"classify", "feedback"}
    with pytest.raises(AuthError) as info:
        auth.authenticate(f"Bearer {tok}", "admin")
    assert info.value.status_code == 403


@pytest.mark.parametrize("args", [["--scope", "root"], ["--scope", "classify", "--ttl", "7200"],
                                  ["--scope", "classify", "--ttl", "10"]])
def test_cli_token_bad_arguments(tmp_path: Path, args: list[str]) -> None:
    proc = cli(tmp_path, *args)
    assert proc.returncode == 2 and "Invalid value" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not proc.stdout

"""serving.auth without servers: every refusal gives the right status and a message a client
can act on, scopes are read as documented, and only the configured algorithm is accepted."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from cca.errors import ConfigError, InputError
from cca.settings import Settings
from serving.auth import SCOPES, Authenticator, AuthError, Caller, mint_token

SECRET = "s" * 40
OTHER_SECRET = "t" * 40
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_settings(home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"home": home, "auth_algorithm": "HS256",
                              "auth_secret": SecretStr(SECRET), "auth_jwks_url": None,
                              "auth_issuer": "cca", "auth_audience": "cca-api",
                              "auth_max_ttl_s": 3600, "auth_leeway_s": 30}
    return Settings(**{**values, **overrides})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def auth(settings: Settings) -> Authenticator:
    return Authenticator(settings)


def claims(**overrides: Any) -> dict[str, Any]:
    """A valid claim set; an override of None drops the claim."""
    now = int(time.time())
    base = {"iss": "cca", "aud": "cca-api", "sub": "svc", "iat": now, "exp": now + 600,
            "jti": "j1", "scope": "classify"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(key: Any = SECRET, alg: str = "HS256", headers: dict | None = None, **kw: Any) -> str:
    return jwt.encode(claims(**kw), key, algorithm=alg, headers=headers)


def bearer(tok: str) -> str:
    return f"Bearer {tok}"


def none_alg_token() -> str:
    return jwt.encode(claims(), None, algorithm="none")


def tampered() -> str:
    head, _, sig = token().split(".")
    forged = jwt.utils.base64url_encode(json.dumps(claims(sub="root", scope="admin")).encode())
    return bearer(f"{head}.{forged.decode()}.{sig}")


def now() -> int:
    """At call time: the table's tokens must be relative to when each row runs."""
    return int(time.time())
# (case, Authorization header, scope asked, expected status, message fragment)
REFUSALS: list[tuple[str, Callable[[], str | None], str, int, str]] = [
    ("no header", lambda: None, "classify", 401, "missing Authorization header"),
    ("empty header", lambda: "  ", "classify", 401, "missing Authorization header"),
    ("basic scheme", lambda: "Basic dXNlcjpwdw==", "classify", 401, "scheme 'Basic'"),
    ("no scheme", lambda: token(), "classify", 401, "use 'Bearer <token>'"),
    ("bearer only", lambda: "Bearer", "classify", 401, "no token after 'Bearer'"),
    ("two parts", lambda: "Bearer abc.def", "classify", 401, "malformed token"),
    ("garbage", lambda: "Bearer !!.@@.##", "classify", 401, "malformed token"),
    ("space inside", lambda: "Bearer a.b c.d", "classify", 401, "malformed token"),
    ("huge", lambda: "Bearer " + "a." * 5000 + "a", "classify", 401, "malformed token"),
    ("bad payload", lambda: bearer(token().split(".")[0] + ".@@@@.abc"), "classify", 401,
     "malformed"),
    ("tampered", tampered, "classify", 401, "signature is invalid"),
    ("other secret", lambda: bearer(token(OTHER_SECRET)), "classify", 401,
     "signature is invalid"),
    ("alg none", lambda: bearer(none_alg_token()), "classify", 401, "algorithm 'none'"),
    ("alg HS512", lambda: bearer(token("u" * 64, alg="HS512")), "classify", 401, "only HS256"),
    ("alg RS256", lambda: bearer(token(RSA_KEY, "RS256")), "classify", 401, "only HS256"),
    ("wrong issuer", lambda: bearer(token(iss="evil")), "classify", 401, "issuer is not 'cca'"),
    ("no issuer", lambda: bearer(token(iss=None)), "classify", 401, "no 'iss' claim"),
    ("wrong audience", lambda: bearer(token(aud="other")), "classify", 401,
     "audience is not 'cca-api'"),
    ("no audience", lambda: bearer(token(aud=None)), "classify", 401, "no 'aud' claim"),
    ("expired", lambda: bearer(token(iat=now() - 700, exp=now() - 60)), "classify", 401,
     "token expired"),
    ("nbf ahead", lambda: bearer(token(nbf=now() + 300)), "classify", 401, "not valid yet"),
    ("iat ahead", lambda: bearer(token(iat=now() + 300, exp=now() + 900)), "classify", 401,
     "not valid yet"),
    ("no exp", lambda: bearer(token(exp=None)), "classify", 401, "no 'exp' claim"),
    ("no iat", lambda: bearer(token(iat=None)), "classify", 401, "no 'iat' claim"),
    ("no sub", lambda: bearer(token(sub=None)), "classify", 401, "no 'sub' claim"),
    ("empty sub", lambda: bearer(token(sub="")), "classify", 401, "'sub' claim is empty"),
    ("exp not a number", lambda: bearer(token(exp="soon")), "classify", 401, "malformed"),
    ("a day long", lambda: bearer(token(iat=now(), exp=now() + 86400)), "classify", 401,
     "lifetime 86400s exceeds the 3600s limit"),
    ("backdated long", lambda: bearer(token(iat=now() - 3000, exp=now() + 1200)), "classify", 401,
     "exceeds the 3600s limit"),
    ("wrong scope", lambda: bearer(token(scope="classify")), "feedback", 403,
     "token lacks scope 'feedback' (has: classify)"),
    ("no scopes", lambda: bearer(token(scope=None)), "classify", 403, "(has: none)"),
    ("unknown scope only", lambda: bearer(token(scope="superuser root")), "admin", 403,
     "(has: none)"),
    ("feedback not admin", lambda: bearer(token(scope="classify feedback")), "admin", 403,
     "lacks scope 'admin' (has: classify, feedback)"),
]


@pytest.mark.parametrize(("case", "header", "scope", "status", "fragment"), REFUSALS,
                         ids=[r[0] for r in REFUSALS])
def test_refusals(auth: Authenticator, case: str, header: Callable[[], str | None], scope: str,
                  status: int, fragment: str) -> None:
    sent = header()
    with pytest.raises(AuthError) as info:
        auth.authenticate(sent, scope)
    err = info.value
    assert err.status_code == status
    assert fragment in err.message
    challenge = err.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="cca"')
    if status == 403:
        assert 'error="insufficient_scope"' in challenge and f'scope="{scope}"' in challenge
    elif case not in ("no header", "empty header"):
        assert 'error="invalid_' in challenge and "error_description=" in challenge
    assert challenge.count('"') % 2 == 0  # every quoted-string closed
    signature = (sent or "").split(".")[-1]
    if len(signature) >= 20:  # a token, or any part of its signature, is never echoed back
        assert signature[-20:] not in err.message + challenge


def test_missing_header_challenge_has_no_error_code(auth: Authenticator) -> None:
    with pytest.raises(AuthError) as info:
        auth.authenticate(None, "classify")
    assert info.value.headers == {"WWW-Authenticate": 'Bearer realm="cca"'}  # RFC 6750 §3.1


@pytest.mark.parametrize("template", ["Bearer {}", "bearer {}", "BEARER   {}  ", "  Bearer {}"])
def test_header_formats(auth: Authenticator, template: str) -> None:
    caller = auth.authenticate(template.format(token()), "classify")
    assert caller == Caller(subject="svc", client_id="svc", scopes=frozenset({"classify"}),
                            token_id="j1")


@pytest.mark.parametrize(("extra", "granted"), [
    ({"scope": "classify feedback"}, {"classify", "feedback"}),
    ({"scope": "admin"}, set(SCOPES)),
    ({"scope": "classify superuser openid"}, {"classify"}),
    ({"scope": None, "scp": ["feedback", "unknown", 7]}, {"feedback"}),
    ({"scope": None, "scp": "classify feedback"}, {"classify", "feedback"}),
    ({"scope": "classify", "scp": ["feedback"]}, {"classify", "feedback"}),
])
def test_scope_claims(auth: Authenticator, extra: dict, granted: set[str]) -> None:
    caller = auth.authenticate(bearer(token(**extra)), next(iter(sorted(granted))))
    assert caller.scopes == frozenset(granted)


@pytest.mark.parametrize("scope", SCOPES)
def test_admin_implies_every_scope(auth: Authenticator, scope: str) -> None:
    assert auth.authenticate(bearer(token(scope="admin")), scope).subject == "svc"


@pytest.mark.parametrize(("extra", "client_id"), [
    ({"azp": "app-1", "client_id": "app-2"}, "app-1"),
    ({"client_id": "app-2"}, "app-2"),
    ({"azp": 5}, "svc"),
    ({}, "svc"),
])
def test_client_id_for_rate_limits(auth: Authenticator, extra: dict, client_id: str) -> None:
    assert auth.authenticate(bearer(token(**extra)), "classify").client_id == client_id


def test_leeway_accepts_just_expired(auth: Authenticator) -> None:
    now = int(time.time())
    assert auth.authenticate(bearer(token(iat=now - 600, exp=now - 5)), "classify")


def test_mint_then_authenticate(settings: Settings, auth: Authenticator) -> None:
    tok = mint_token(settings, ["feedback", "classify", "feedback"], subject="alice", ttl_s=120)
    caller = auth.authenticate(bearer(tok), "feedback")
    assert caller.subject == "alice" and caller.scopes == {"classify", "feedback"}
    assert caller.token_id and len(caller.token_id) == 32
    payload = jwt.decode(tok, options={"verify_signature": False})
    assert payload["exp"] - payload["iat"] == 120 and payload["scope"] == "feedback classify"
    with pytest.raises(AuthError) as info:
        auth.authenticate(bearer(tok), "admin")
    assert info.value.status_code == 403


def test_per_home_secret_when_unset(tmp_path: Path) -> None:
    s = make_settings(tmp_path, auth_secret=None)
    tok = mint_token(s, ["classify"])
    key_file = s.secrets_dir / "jwt_hs256.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert Authenticator(s).authenticate(bearer(tok), "classify").subject == "dev"
    other = make_settings(tmp_path / "other", auth_secret=None)
    with pytest.raises(AuthError, match="signature is invalid"):
        Authenticator(other).authenticate(bearer(tok), "classify")


@pytest.mark.parametrize(("scopes", "ttl"), [([], 60), (["root"], 60), (["classify"], 0),
                                             (["classify"], 3601)])
def test_mint_refuses_bad_input(settings: Settings, scopes: list[str], ttl: int) -> None:
    with pytest.raises(InputError):
        mint_token(settings, scopes, ttl_s=ttl)


def test_mint_refused_in_rs256_mode(tmp_path: Path) -> None:
    s = make_settings(tmp_path, auth_algorithm="RS256", auth_jwks_url="http://127.0.0.1:9/")
    with pytest.raises(ConfigError, match="identity provider"):
        mint_token(s, ["classify"])


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"auth_secret": SecretStr("short")}, "at least 32 bytes"),
    ({"auth_algorithm": "RS256"}, "needs CCA_AUTH_JWKS_URL"),
    ({"auth_algorithm": "RS256", "auth_jwks_url": "file:///etc/passwd"}, "CCA_AUTH_JWKS_URL"),
])
def test_bad_config(tmp_path: Path, overrides: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Authenticator(make_settings(tmp_path, **overrides))


def test_unknown_scope_name_is_a_programming_error(auth: Authenticator) -> None:
    with pytest.raises(ValueError, match="unknown scope"):
        auth.authenticate(bearer(token()), "write")


@pytest.fixture
def rs_auth(tmp_path: Path) -> Authenticator:
    # Nothing listens on port 9: these tokens must be refused before any key is fetched.
    return Authenticator(make_settings(tmp_path, auth_algorithm="RS256",
                                       auth_jwks_url="http://127.0.0.1:9/jwks.json"))


def test_rs256_mode_refuses_hs256(rs_auth: Authenticator) -> None:
    with pytest.raises(AuthError, match=r"algorithm 'HS256' is not accepted \(only RS256\)"):
        rs_auth.authenticate(bearer(token(headers={"kid": "k1"})), "classify")


def test_rs256_mode_refuses_key_confusion(rs_auth: Authenticator) -> None:
    """The classic attack: HS256 signed with the server's public RSA key (PEM) as the secret."""
    pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    head = jwt.utils.base64url_encode(b'{"alg":"HS256","kid":"k1","typ":"JWT"}')
    body = jwt.utils.base64url_encode(json.dumps(claims(scope="admin")).encode())
    sig = jwt.utils.base64url_encode(hmac.new(pem, head + b"." + body, hashlib.sha256).digest())
    forged = b".".join([head, body, sig]).decode()
    for tok in (forged, none_alg_token()):
        with pytest.raises(AuthError) as info:
            rs_auth.authenticate(bearer(tok), "classify")
        assert info.value.status_code == 401 and "only RS256" in info.value.message


def test_rs256_token_needs_kid(rs_auth: Authenticator) -> None:
    with pytest.raises(AuthError, match=r"no key id \('kid'\)"):
        rs_auth.authenticate(bearer(token(RSA_KEY, "RS256")), "classify")


def test_a_verified_token_is_remembered_until_it_expires(
        auth: Authenticator, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = token(exp=int(time.time()) + 5)
    assert auth.cached(bearer(tok), "classify") is None  # never verified: the caller must
    decodes: list[str] = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **kw: decodes.append("x") or real(*a, **kw))
    first = auth.authenticate(bearer(tok), "classify")
    assert auth.cached(bearer(tok), "classify") == first
    assert auth.authenticate(bearer(tok), "classify") == first and len(decodes) == 1
    with pytest.raises(AuthError) as refused:  # the scope is still checked on a cached token
        auth.cached(bearer(tok), "admin")
    assert refused.value.status_code == 403
    with pytest.raises(AuthError):  # and the scheme
        auth.authenticate(f"Basic {tok}", "classify")
    later = time.time() + 40  # past the expiry and the 30 s leeway
    monkeypatch.setattr(time, "time", lambda: later)
    assert auth.cached(bearer(tok), "classify") is None
    # Past its expiry the token is verified afresh (PyJWT reads its own clock, not time.time).
    auth.authenticate(bearer(tok), "classify")
    assert len(decodes) == 2

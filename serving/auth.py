"""Bearer-token authentication for the HTTP service: OAuth 2.0 JWTs checked on every request.

HS256 with a shared secret (unset: a random per-home secret, what ``cca token`` signs with) or
RS256 with public keys from an identity provider's JWKS. Only the configured algorithm is
accepted, so neither ``alg: none`` nor an HS/RS confusion gets through, and tokens must be
short-lived (lifetime at most ``auth_max_ttl_s``) so a leaked one is worth an hour at most.
Tokens are never logged, and no part of one is echoed back in an error.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.exceptions import PyJWTError

from cca.errors import ConfigError, InputError
from cca.keys import load_or_create_key
from cca.settings import Settings
from serving.jwks import JwksKeys, KeysUnavailable, UnknownKey

log = logging.getLogger("cca.serving.auth")

SCOPES = ("classify", "feedback", "admin")  # "admin" implies every scope
REALM = "cca"
MAX_TOKEN_CHARS = 8192  # bounds the work an oversized header can cause
JWKS_TIMEOUT_S = 2.0
VERIFIED_CACHE_S, VERIFIED_CACHE_SIZE = 60.0, 4096
_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')  # not allowed in an RFC 6750 error_description


def _clip(value: object, limit: int = 40) -> str:
    """A caller-supplied value made safe to quote in a message and a header."""
    text = _UNSAFE.sub("?", str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class AuthError(Exception):
    """Why a request is refused, ready for the HTTP response: status, message, headers."""

    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status_code, self.message, self.headers = status_code, message, headers or {}

    @classmethod
    def unauthorized(cls, message: str, error: str | None = "invalid_token") -> AuthError:
        value = f'Bearer realm="{REALM}"'
        if error:  # RFC 6750 §3.1: no error code when the request had no credentials at all
            value += f', error="{error}", error_description="{_clip(message, 200)}"'
        return cls(401, message, {"WWW-Authenticate": value})

    @classmethod
    def forbidden(cls, scope: str, has: frozenset[str]) -> AuthError:
        message = f"token lacks scope '{scope}' (has: {', '.join(sorted(has)) or 'none'})"
        value = (f'Bearer realm="{REALM}", error="insufficient_scope", '
                 f'error_description="{message}", scope="{scope}"')
        return cls(403, message, {"WWW-Authenticate": value})


@dataclass(frozen=True)
class Caller:
    """Who made the request, as the verified token says."""

    subject: str
    client_id: str  # the key for per-client rate limits
    scopes: frozenset[str]
    token_id: str | None


# Most specific first: several PyJWT errors subclass DecodeError.
_MESSAGES: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not valid yet (its iat or nbf is in the future)"),
    (jwt.InvalidSignatureError, "token signature is invalid"),
    (jwt.InvalidIssuedAtError, "token 'iat' claim is not a number"),
    (jwt.exceptions.InvalidSubjectError, "token 'sub' claim must be a string"),
    (jwt.exceptions.InvalidJTIError, "token 'jti' claim must be a string"),
    (jwt.DecodeError, "malformed token"),
)


def _hs256_secret(settings: Settings) -> bytes:
    if settings.auth_secret is not None:
        secret = settings.auth_secret.get_secret_value().encode()
        if len(secret) < 32:
            raise ConfigError("CCA_AUTH_SECRET must be at least 32 bytes for HS256 "
                              "(RFC 7518 §3.2); e.g. `openssl rand -hex 32`")
        return secret
    return load_or_create_key(settings.secrets_dir / "jwt_hs256.key")


def _bearer_token(authorization: str | None) -> str:
    header = (authorization or "").strip()
    if not header:
        raise AuthError.unauthorized(
            "missing Authorization header (expected 'Bearer <token>')", error=None)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        # Never echo what was sent: a bare token would land in a message (and maybe a log).
        shown = f"'{scheme}' " if scheme.isalpha() and len(scheme) <= 16 else ""
        raise AuthError.unauthorized(
            f"Authorization scheme {shown}is not supported; use 'Bearer <token>'",
            error="invalid_request")
    token = token.strip()
    if not token:
        raise AuthError.unauthorized("no token after 'Bearer'", error="invalid_request")
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2 or " " in token:
        raise AuthError.unauthorized("malformed token (expected a JWT: three dot-separated parts)")
    return token


def _peek_header(token: str) -> dict[str, Any]:
    """The unverified JOSE header, to pick the key and name a wrong algorithm before verifying.
    (PyJWT's ``get_unverified_header`` would decode all three parts, on every request.)"""
    head = token.partition(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except ValueError:  # binascii.Error, JSONDecodeError and UnicodeDecodeError all are
        header = None
    if isinstance(header, dict):
        return header
    raise AuthError.unauthorized("malformed token (its header is not base64url JSON)")


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    """Known scopes from ``scope`` (space-separated, RFC 8693) and ``scp`` (list or string)."""
    names: list[Any] = []
    for claim in ("scope", "scp"):
        value = claims.get(claim)
        if isinstance(value, str):
            names += value.split()
        elif isinstance(value, list):
            names += value
    found = frozenset(n for n in names if isinstance(n, str) and n in SCOPES)
    return frozenset(SCOPES) if "admin" in found else found


class Authenticator:
    """Verifies ``Authorization: Bearer`` JWTs against the configured algorithm and key."""

    def __init__(self, settings: Settings, *, jwks_lifespan_s: float = 300.0,
                 jwks_cooldown_s: float = 10.0) -> None:
        self.settings = settings
        self.algorithm = settings.auth_algorithm
        self._jwks: JwksKeys | None = None
        self._secret: bytes | None = None
        if self.algorithm == "RS256":
            if not settings.auth_jwks_url:
                raise ConfigError("CCA_AUTH_ALGORITHM=RS256 needs CCA_AUTH_JWKS_URL "
                                  "(your identity provider's JWKS endpoint)")
            self._jwks = JwksKeys(settings.auth_jwks_url, JWKS_TIMEOUT_S,
                                  jwks_lifespan_s, jwks_cooldown_s)
        else:
            self._secret = _hs256_secret(settings)
        self._decode_kwargs: dict[str, Any] = {
            "algorithms": [self.algorithm], "audience": settings.auth_audience,
            "issuer": settings.auth_issuer, "leeway": settings.auth_leeway_s,
            "options": {"require": ["exp", "iat", "sub"]},
        }
        # token -> (caller, verified until): a client reusing its token skips the signature
        # check for VERIFIED_CACHE_S, never past the token's expiry.
        self._recent: dict[str, tuple[Caller, float, str | None]] = {}

    def authenticate(self, authorization: str | None, scope: str) -> Caller:
        """The caller behind a raw Authorization header value, if it may use ``scope``."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}; expected one of {SCOPES}")
        token = _bearer_token(authorization)
        caller = self._recent_caller(token)
        if caller is None:
            claims = self._verify(token)
            caller = self._caller(claims)
            if len(self._recent) >= VERIFIED_CACHE_SIZE:
                self._recent.clear()
            self._recent[token] = (caller, min(int(claims["exp"]),
                                               time.time() + VERIFIED_CACHE_S),
                                   _peek_header(token).get("kid"))
        if scope not in caller.scopes:
            raise AuthError.forbidden(scope, caller.scopes)
        return caller

    def _recent_caller(self, token: str) -> Caller | None:
        hit = self._recent.get(token)
        if hit is None or time.time() >= hit[1]:
            return None
        # RS256: only while the key set is fresh, so a withdrawn key stops working on time.
        if self._jwks is not None and self._jwks.fresh_key(hit[2]) is None:
            return None
        return hit[0]

    def cached(self, authorization: str | None, scope: str) -> Caller | None:
        """``authenticate`` when its answer costs no I/O (a token verified in the last
        VERIFIED_CACHE_S), else None: the event loop then verifies on a thread."""
        token = (authorization or "").partition(" ")[2].strip()
        return self.authenticate(authorization, scope) if self._recent_caller(token) else None

    def _verify(self, token: str) -> dict[str, Any]:
        header = _peek_header(token)
        alg = header.get("alg")
        if alg != self.algorithm:
            raise AuthError.unauthorized(
                f"token algorithm '{_clip(alg)}' is not accepted (only {self.algorithm})")
        if self._jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise AuthError.unauthorized("token header has no key id ('kid')")
            try:
                key: Any = self._jwks.key(kid)
            except KeysUnavailable as exc:
                raise AuthError(503, "cannot fetch the identity provider's signing keys from "
                                     f"{self._jwks.url} ({exc})", {"Retry-After": "10"}) from None
            except UnknownKey:
                raise AuthError.unauthorized(f"token key id '{_clip(kid)}' is not among the "
                                             "identity provider's signing keys") from None
        else:
            key = self._secret
        s = self.settings
        try:
            claims = jwt.decode(token, key, **self._decode_kwargs)
        except jwt.InvalidAudienceError:
            raise AuthError.unauthorized(f"token audience is not '{s.auth_audience}'") from None
        except jwt.InvalidIssuerError:
            raise AuthError.unauthorized(f"token issuer is not '{s.auth_issuer}'") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError.unauthorized(f"token has no '{exc.claim}' claim") from None
        except PyJWTError as exc:
            message = next((m for t, m in _MESSAGES if isinstance(exc, t)), "invalid token")
            raise AuthError.unauthorized(message) from None
        # "Expiry ≤ 1 hour": a day-long token is refused even while unexpired. (The second test
        # is a backstop: PyJWT already refuses an iat more than the leeway ahead.)
        exp, iat = int(claims["exp"]), int(claims["iat"])  # PyJWT has checked they are ints
        limit = s.auth_max_ttl_s
        if exp - iat > limit or exp - time.time() > limit + s.auth_leeway_s:
            raise AuthError.unauthorized(f"token lifetime {exp - iat}s exceeds the {limit}s limit")
        return claims

    @staticmethod
    def _caller(claims: dict[str, Any]) -> Caller:
        subject = claims["sub"]
        if not subject:
            raise AuthError.unauthorized("token 'sub' claim is empty")
        client = next((c for c in (claims.get("azp"), claims.get("client_id"))
                       if isinstance(c, str) and c), subject)
        return Caller(subject=subject, client_id=client, scopes=_scopes(claims),
                      token_id=claims.get("jti"))


def mint_token(settings: Settings, scopes: list[str], subject: str = "dev",
               ttl_s: int = 3600) -> str:
    """A short-lived HS256 token signed with this home's secret: for development and scripts."""
    if settings.auth_algorithm != "HS256":
        raise ConfigError("CCA_AUTH_ALGORITHM is RS256: tokens come from your identity provider "
                          "(cca token signs HS256 only)")
    if not scopes or any(s not in SCOPES for s in scopes):
        raise InputError(f"scopes must be some of {', '.join(SCOPES)}; got {scopes}")
    if not 0 < ttl_s <= settings.auth_max_ttl_s or not subject:
        raise InputError(f"need a subject and a ttl of 1..{settings.auth_max_ttl_s} seconds")
    now = int(time.time())
    claims = {"iss": settings.auth_issuer, "aud": settings.auth_audience, "sub": subject,
              "iat": now, "exp": now + ttl_s, "jti": secrets.token_hex(16),
              "scope": " ".join(dict.fromkeys(scopes))}
    return jwt.encode(claims, _hs256_secret(settings), algorithm="HS256")

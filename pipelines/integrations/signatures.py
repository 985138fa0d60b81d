"""HMAC signature and timestamp checks shared by the vendors' webhooks.

Constant-time comparison (``hmac.compare_digest``); a timestamp more than the allowed skew
away from now, either way, is refused so a captured request cannot be replayed later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import datetime

from pipelines.integrations.events import WebhookRejected


def hmac_sha256(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()


def check_hex(secret: str, message: bytes, given: str | None, prefix: str = "sha256=") -> None:
    """``given`` must be ``prefix`` + the lower-case hex HMAC-SHA256 of ``message``."""
    if not given:
        raise WebhookRejected(401, "missing signature header")
    value = given.strip()
    if prefix and not value.lower().startswith(prefix):
        raise WebhookRejected(401, f"signature must start with {prefix!r}")
    expected = hmac_sha256(secret, message).hex()
    if not hmac.compare_digest(value[len(prefix):].lower(), expected):
        raise WebhookRejected(401, "signature does not match the body")


def check_base64(secret: str, message: bytes, given: str | None) -> None:
    """``given`` must be the base64 HMAC-SHA256 of ``message``."""
    if not given:
        raise WebhookRejected(401, "missing signature header")
    expected = base64.b64encode(hmac_sha256(secret, message)).decode("ascii")
    if not hmac.compare_digest(given.strip(), expected):
        raise WebhookRejected(401, "signature does not match the body")


def check_fresh(when: float | None, max_skew_s: float, now: float | None = None) -> None:
    """``when`` (Unix seconds) must be within ``max_skew_s`` of now."""
    if when is None:
        raise WebhookRejected(401, "missing or unreadable signature timestamp")
    skew = abs((time.time() if now is None else now) - when)
    if skew > max_skew_s:
        raise WebhookRejected(401, f"signature timestamp is {skew:.0f} s from now "
                                   f"(allowed: {max_skew_s:.0f} s)")


def unix_seconds(value: str | None) -> float | None:
    """A timestamp header as Unix seconds: digits, or ISO 8601 (Zendesk sends ISO)."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo else None


def body_key(source: str, body: bytes) -> str:
    """An event key for vendors that send no event id: the same body is the same event."""
    return "sha256:" + hashlib.sha256(source.encode() + b"\0" + body).hexdigest()

"""What every vendor writer shares: the update to send, how failures are told, one HTTP path.

A request the vendor certainly did not apply (429, 409 for a concurrent edit, a connection
that was never made) is retried in the call with backoff that honours ``Retry-After``
(tenacity). A write that may have been applied (a 5xx, or no answer after it was sent) is
never resent in the call: notes and comments are not idempotent. It fails as retryable, and
the worker reschedules the event durably (``retry_after`` says when) and, next time, first
asks the vendor whether the note is there (``Writer.already_written``). After
``CCA_WRITEBACK_MAX_ATTEMPTS`` an event goes to the dead-letter list. Other 4xx answers (bad
credentials, a deleted ticket, a field the vendor refuses) are not retried: they need a
person, and the dead letter says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from pipelines.connectors.base import retry_after_seconds

RETRYABLE_STATUS = frozenset({409, 429, 500, 502, 503, 504})
# Answers and transport failures that prove the request was not applied: safe to resend now.
_NOT_APPLIED_STATUS = frozenset({409, 429})
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class Routing:
    """What to write to one ticket. ``group``/``priority`` are vendor values (None: leave the
    field alone); ``tags`` are added, never replacing the agent's own; ``note`` is internal
    and ends with ``marker``."""

    ticket_ref: str
    group: str | None
    priority: str | None
    tags: tuple[str, ...]
    note: str
    marker: str
    review: bool = False


class WriteFailed(Exception):
    """A write-back that did not happen; ``retryable`` says whether trying later may help."""

    def __init__(self, reason: str, *, status: int | None = None, retryable: bool,
                 retry_after: float | None = None, not_applied: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.not_applied = not_applied  # the vendor certainly did not apply it


class Writer(Protocol):
    """One vendor's write-back. ``write`` applies ``routing`` (every request of it) or
    raises ``WriteFailed``; ``already_written`` says whether a note with ``marker`` is
    on the ticket (the check after a crash between the vendor's answer and our record)."""

    source: str

    def write(self, routing: Routing) -> None: ...

    def already_written(self, ticket_ref: str, marker: str) -> bool: ...

    def own_actor(self) -> str | None:
        """The integration user as the vendor's webhooks name the actor (Zendesk user id,
        Jira accountId, ServiceNow user name): changes it made are the product's own."""
        ...


def _failure(resp: httpx.Response, what: str) -> WriteFailed:
    status = resp.status_code
    detail = " ".join(resp.text.split())[:200] or "(empty body)"
    retryable = status in RETRYABLE_STATUS
    hint = {401: "; check the credentials", 403: "; the integration user lacks the right",
            404: "; the ticket no longer exists"}.get(status, "")
    return WriteFailed(f"{what}: HTTP {status}{hint}: {detail}", status=status,
                       retryable=retryable, not_applied=status in _NOT_APPLIED_STATUS,
                       retry_after=retry_after_seconds(resp.headers.get("Retry-After")))


class VendorHttp:
    """Authenticated JSON requests to one vendor with short in-call retries."""

    def __init__(self, source: str, base_url: str, auth: httpx.Auth,
                 client: httpx.Client | None = None, *, timeout_s: float = 10.0,
                 attempts: int = 3, max_wait_s: float = 5.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.source = source
        self.base_url = base_url.rstrip("/")
        self._auth = auth
        self._client = client or httpx.Client(timeout=timeout_s)
        self._attempts = attempts
        self._max_wait_s = max_wait_s
        self._sleep = sleep

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = exc.retry_after if isinstance(exc, WriteFailed) else None
        wait = hinted if hinted is not None else 0.5 * 2 ** (state.attempt_number - 1)
        return min(wait, self._max_wait_s)

    def _once(self, method: str, path: str, params: dict[str, Any] | None,
              body: Any) -> httpx.Response:
        what = f"{self.source} {method} {path}"
        try:
            resp = self._client.request(method, f"{self.base_url}{path}", params=params,
                                        json=body, auth=self._auth,
                                        headers={"Accept": "application/json"})
        except httpx.TransportError as exc:
            sent = not isinstance(exc, _NOT_SENT)
            reason = ("no answer after sending; it may have been applied" if sent
                      else f"cannot reach {self.base_url}")
            raise WriteFailed(f"{what}: {reason} ({type(exc).__name__})", retryable=True,
                              not_applied=not sent) from exc
        if resp.status_code >= 400:
            raise _failure(resp, what)
        return resp

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                json: Any = None) -> httpx.Response:
        """A 2xx response, or ``WriteFailed`` once the in-call retries are spent. A read is
        also retried after a 5xx or a lost answer (reading twice is harmless)."""

        def again(exc: BaseException) -> bool:
            return isinstance(exc, WriteFailed) and exc.retryable and (
                exc.not_applied or method == "GET")

        retrying = Retrying(
            retry=retry_if_exception(again),
            stop=stop_after_attempt(self._attempts), wait=self._wait, sleep=self._sleep,
            reraise=True)
        return retrying(self._once, method, path, params, json)

    def json(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.request(method, path, **kw)
        try:
            return resp.json() if resp.content else None
        except ValueError as exc:
            raise WriteFailed(f"{self.source} {method} {path}: answer is not JSON",
                              status=resp.status_code, retryable=False) from exc

    def close(self) -> None:
        self._client.close()

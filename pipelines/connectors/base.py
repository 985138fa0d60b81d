"""What every ticketing-system connector shares: the batch it returns and one careful HTTP path.

The ingest job runs hourly and unattended, so a connector must retry what is worth retrying
(429 and 5xx, honouring ``Retry-After`` but never waiting longer than a cap), and turn what
is not (bad credentials, a host that stays unreachable) into one ``StateError`` line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, runtime_checkable

import httpx
from pydantic import ValidationError
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from cca.errors import StateError
from cca.tickets import Ticket

Reject = tuple[str, str, dict]


@dataclass
class ConnectorBatch:
    """Records mapped to ``Ticket`` fields (plus ``label``), rejects with reasons, next cursor."""

    records: list[dict] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    next_cursor: str | None = None


@runtime_checkable
class TicketConnector(Protocol):
    name: str

    def fetch(self, cursor: str | None) -> ConnectorBatch:
        """Everything updated since ``cursor`` (all pages), oldest first."""
        ...


class _Retryable(Exception):
    """A response or transport failure worth another attempt."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: vendors send delta-seconds, RFC 9110 also allows a date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class HttpSource:
    """Authenticated JSON GETs against one vendor, with capped retries and one-line failures."""

    def __init__(
        self,
        name: str,
        base_url: str,
        auth: httpx.Auth,
        client: httpx.Client | None = None,
        *,
        attempts: int = 5,
        max_wait: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        credentials_hint: str = "",
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._auth = auth
        self._client = client or httpx.Client(timeout=30.0)
        self._attempts = attempts
        self._max_wait = max_wait
        self._sleep = sleep
        self._hint = credentials_hint

    def url(self, path: str) -> str:
        """Absolute URL for ``path``; a vendor's paging link must stay on the configured host,
        since our credentials go with every request."""
        if not path.startswith(("http://", "https://")):
            return f"{self.base_url}{path}"
        if httpx.URL(path).netloc != httpx.URL(self.base_url).netloc:
            raise StateError(f"{self.name}: refusing to follow a paging link off "
                             f"{self.base_url}: {path}")
        return path

    def _wait(self, state: RetryCallState) -> float:
        """The server's Retry-After when given, else exponential backoff; capped either way."""
        exc = state.outcome.exception() if state.outcome else None
        hinted = exc.retry_after if isinstance(exc, _Retryable) else None
        wait = hinted if hinted is not None else 2.0 ** (state.attempt_number - 1)
        return min(wait, self._max_wait)

    def _once(self, url: str, params: dict[str, Any] | None) -> httpx.Response:
        try:
            resp = self._client.get(url, params=params, auth=self._auth,
                                    headers={"Accept": "application/json"})
        except httpx.TransportError as exc:
            raise _Retryable(f"cannot reach {self.base_url}: {type(exc).__name__}") from exc
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Retryable(f"{self.base_url} answered HTTP {resp.status_code}",
                             retry_after_seconds(resp.headers.get("Retry-After")))
        return resp

    def get(self, path: str, params: dict[str, Any] | None = None) -> httpx.Response:
        """GET ``path`` and return a 2xx response, or raise ``StateError`` with one line."""
        url = self.url(path)
        retrying = Retrying(
            retry=retry_if_exception_type(_Retryable),
            stop=stop_after_attempt(self._attempts),
            wait=self._wait,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            resp = retrying(self._once, url, params)
        except _Retryable as exc:
            raise StateError(f"{self.name}: {exc} after {self._attempts} attempts") from None
        if resp.status_code in (401, 403):
            raise StateError(f"{self.name}: authentication refused (HTTP {resp.status_code}) "
                             f"by {self.base_url}; check {self._hint}")
        if resp.status_code >= 400:
            raise StateError(f"{self.name}: HTTP {resp.status_code} from {url}: "
                             f"{_first_line(resp.text)}")
        return resp

    def json_of(self, resp: httpx.Response) -> dict:
        """The JSON object a vendor answered; anything else is a broken integration."""
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise StateError(f"{self.name}: {resp.url} did not answer a JSON object")
        return body

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> dict:
        return self.json_of(self.get(path, params))


def _first_line(text: str, limit: int = 200) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "(empty body)")
    return line[:limit]


class BatchBuilder:
    """Collects mapped records, keeping the latest version of a ticket seen twice in one run.

    Offset and time-window paging can return a ticket again if it changed while we paged; the
    later copy is newer, so it replaces the earlier one and moves to the end (oldest first).
    """

    def __init__(self) -> None:
        self._records: dict[str, dict] = {}
        self.rejects: list[Reject] = []

    def reject(self, location: str, reason: str, raw: dict) -> None:
        self.rejects.append((location, reason, raw))

    def add(self, location: str, raw: dict, record: dict) -> None:
        """Accept ``record`` only if it would make a valid ``Ticket``; otherwise reject it."""
        if not (record.get("subject") or record.get("body")):
            self.reject(location, "no text: subject and description are both empty", raw)
            return
        try:
            Ticket.model_validate({k: v for k, v in record.items() if k != "label"})
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "record"
            self.reject(location, f"{where}: {err['msg']}", raw)
            return
        self._records.pop(record["id"], None)
        self._records[record["id"]] = record

    def batch(self, next_cursor: str | None) -> ConnectorBatch:
        return ConnectorBatch(list(self._records.values()), self.rejects, next_cursor)


def text_of(value: Any) -> str:
    """A vendor string field as clean text; vendors send null, "" or whitespace for 'none'."""
    return value.strip() if isinstance(value, str) else ""


def parse_time(value: Any) -> datetime | None:
    """An ISO-8601 or 'YYYY-MM-DD HH:MM:SS' (UTC) timestamp; None when absent or malformed."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

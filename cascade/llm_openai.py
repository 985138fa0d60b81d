"""The LLM stage against any OpenAI-compatible chat endpoint (OpenAI, Azure OpenAI, vLLM,
llama.cpp server): retrieval-augmented, constrained to candidate labels (``cascade.llm_prompt``).

A slow, failing or rate-limiting endpoint must not hold up the earlier stages' answers: each
attempt has a short timeout, a 429 or 5xx is retried with jittered backoff (honouring
Retry-After) only while the per-ticket deadline allows, and a circuit breaker skips the
endpoint while it fails. A daily budget (``cascade.llm_budget``) stops spending. Every problem
makes the stage abstain (None: the ticket goes to human review) with a counted reason;
nothing is raised into the cascade. Ticket text is never logged, not even redacted.

Breaker accounting (once per ticket, after its retries): connection errors, timeouts, 5xx,
401/403/404/408 count as failures; a 429 opens the breaker for the server's Retry-After; an
answer that is not JSON or names a label outside the candidates is *not* a failure (the
endpoint is up, only this answer is unusable) and is counted as ``invalid``; other 4xx (a
request the server refused, e.g. too long) count as ``rejected``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from openai import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AzureOpenAI,
    OpenAI,
    RateLimitError,
)
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from cascade.circuit_breaker import BreakerState, CircuitBreaker, retry_after_s
from cascade.llm_budget import DailyBudget
from cascade.llm_prompt import (
    MAX_EXPLANATION_CHARS,
    Example,
    build_messages,
    candidate_labels,
    explain_messages,
    leaks_prompt,
    parse_answer,
    response_format,
)
from cascade.llm_stage import LLMAnswer
from cca.settings import Settings
from cca.tickets import Neighbour, Ticket

log = logging.getLogger(__name__)

_FAILURE_STATUSES = frozenset({401, 403, 404, 408})
_FORMATS = ("json_schema", "json_object_schema", "json_object", None)  # fallback order

EventHook = Callable[[str, float], None]
"""Called after every classify with (outcome, seconds); outcomes: ok, invalid, failure,
rate_limited, rejected, skipped (breaker open), budget (daily cap reached). Must be quick;
its exceptions are swallowed."""


@dataclass
class LLMStats:
    """Counters since start, for the service's metrics."""

    calls: int = 0  # requests sent to the endpoint
    ok: int = 0
    invalid: int = 0
    failures: int = 0
    rate_limited: int = 0
    rejected: int = 0
    skipped: int = 0  # classify calls refused by the open breaker, no network
    budget: int = 0  # classify calls refused because the daily budget is spent
    retries: int = 0  # extra attempts after a 429 or 5xx
    prompt_echoes: int = 0  # explanations withheld for repeating the instructions
    no_examples: int = 0  # tickets asked about with no retrieved example (empty retrieval)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class OpenAICompatibleStage:
    """Classify one ticket with a chat completion constrained to its candidate labels."""

    name = "openai"

    def __init__(self, settings: Settings, client: OpenAI | None = None,
                 on_event: EventHook | None = None,
                 on_state_change: Callable[[BreakerState, BreakerState], None] | None = None,
                 ) -> None:
        api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else None
        self.client = client or _client(settings, api_key)
        self.model = settings.llm_model
        self.max_few_shot, self.max_candidates = (settings.llm_max_few_shot,
                                                  settings.llm_max_candidates)
        self.timeout_s, self.deadline_s = settings.llm_timeout_s, settings.llm_deadline_s
        self.max_attempts = settings.llm_max_attempts
        self.price_in, self.price_out = (settings.llm_price_in_per_1k_usd,
                                         settings.llm_price_out_per_1k_usd)
        self.breaker = CircuitBreaker(settings.llm_breaker_failures,
                                      settings.llm_breaker_cooldown_s,
                                      on_change=on_state_change)
        self.budget = DailyBudget(settings.llm_daily_budget_usd, settings.redis_url)
        self.on_event = on_event
        self._format: str | None = settings.llm_response_format
        self._stats = LLMStats()
        self._lock = threading.Lock()

    @property
    def state(self) -> BreakerState:
        return self.breaker.state

    @property
    def budget_exhausted(self) -> bool:
        return self.budget.exhausted()

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters plus the breaker state."""
        with self._lock:
            snap = asdict(self._stats)
        return {**snap, "state": self.breaker.state, "breaker_opened": self.breaker.opened_count}

    def close(self) -> None:
        self.client.close()

    def classify(
        self, ticket: Ticket, neighbours: list[Neighbour], labels: list[str],
        ranked: list[str] | None = None, examples: list[Example] | None = None,
        descriptions: dict[str, str] | None = None,
    ) -> LLMAnswer | None:
        """``ranked``: labels the earlier stages found likely, best first (the candidates);
        ``examples``: redacted texts of the nearest labelled tickets."""
        t0 = time.perf_counter()
        try:
            if not labels:
                return None
            evidence = [*(ranked or []), *(n.label for n in sorted(
                neighbours, key=lambda n: -n.similarity))]
            candidates = candidate_labels(labels, evidence, self.max_candidates)
            messages = build_messages(ticket.text, candidates,
                                      (examples or [])[:self.max_few_shot], descriptions)
        except Exception:
            log.exception("LLM prompt could not be built")
            return None
        if not examples:  # an empty retrieval: asked anyway, on the candidates alone
            with self._lock:
                self._stats.no_examples += 1
        if self.budget.exhausted():
            self._finish("budget", t0)
            return None
        if not self.breaker.allow():
            self._finish("skipped", t0)
            return None
        try:
            response = self._call(messages, candidates)
        except Exception as exc:
            try:
                outcome = self._record_error(exc)
            except Exception:  # never let the bookkeeping raise into the cascade
                self.breaker.record_failure()
                outcome = "failure"
            self._finish(outcome, t0)
            return None
        self.breaker.record_success()
        try:
            answer, outcome = self._answer(response, candidates)
        except Exception:
            log.exception("LLM response could not be read")
            answer, outcome = None, "invalid"
        self._finish(outcome, t0)
        return answer

    def explain(self, text: str, label: str, evidence: str) -> LLMAnswer | None:
        """A one- or two-sentence reason for a decision already made (off the hot path);
        same retries, breaker and budget as ``classify``."""
        if self.budget.exhausted() or not self.breaker.allow():
            return None
        try:
            response = self._call(explain_messages(text, label, evidence), None)
        except Exception as exc:
            with contextlib.suppress(Exception):
                self._record_error(exc)
            return None
        self.breaker.record_success()
        content = _content(response)
        prompt, completion, cost = self._usage(response)
        if not content or not content.strip():
            return None
        if leaks_prompt(content):
            with self._lock:
                self._stats.prompt_echoes += 1
            return None
        return LLMAnswer(label=label, confidence=1.0,
                         explanation=" ".join(content.split())[:MAX_EXPLANATION_CHARS],
                         cost_usd=cost, prompt_tokens=prompt, completion_tokens=completion,
                         model=str(getattr(response, "model", "") or self.model))

    def _call(self, messages: list[dict[str, str]], candidates: list[str] | None) -> Any:
        """The request with retries: a 429 or 5xx is tried again after Retry-After or a
        jittered backoff, while the ticket's deadline allows."""
        deadline = time.monotonic() + self.deadline_s

        def wait(rs: RetryCallState) -> float:
            exc = rs.outcome.exception() if rs.outcome else None
            headers = getattr(getattr(exc, "response", None), "headers", None)
            told = retry_after_s(headers)
            return told if told is not None else _BACKOFF(rs)

        def stop(rs: RetryCallState) -> bool:
            late = time.monotonic() + rs.upcoming_sleep + 0.1 > deadline
            return rs.attempt_number >= self.max_attempts or late

        def before_sleep(rs: RetryCallState) -> None:
            with self._lock:
                self._stats.retries += 1

        for attempt in Retrying(retry=retry_if_exception(_retryable), wait=wait, stop=stop,
                                before_sleep=before_sleep, reraise=True):
            with attempt:
                remaining = max(0.05, deadline - time.monotonic())
                return self._create(messages, candidates, min(self.timeout_s, remaining))
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _create(self, messages: list[dict[str, str]], candidates: list[str] | None,
                timeout_s: float) -> Any:
        """One request. An error naming the structured-output option moves to the
        next weaker format for good (json_schema -> json_object + schema -> json_object ->
        none) and asks again at once."""
        while True:
            with self._lock:
                self._stats.calls += 1
            fmt = self._format
            params: dict[str, Any] = {"temperature": 0, "max_tokens": 256}
            if fmt is not None and candidates is not None:
                params["response_format"] = response_format(fmt, candidates)
            try:
                return self.client.with_options(timeout=timeout_s).chat.completions.create(
                    model=self.model, messages=messages, **params)  # type: ignore[arg-type]
            except APIStatusError as exc:
                # llama-cpp-python answers an unknown response_format with a 500 whose body
                # names it; others with a 400 or 422.
                text = f"{exc.message} {exc.body}".lower()
                if ("response_format" not in params or exc.status_code not in (400, 422, 500)
                        or "response_format" not in text):
                    raise
                nxt = _FORMATS[_FORMATS.index(fmt) + 1]
                log.warning("LLM endpoint rejects response_format %s; using %s from now on",
                            fmt, nxt or "none")
                self._format = nxt

    def _record_error(self, exc: Exception) -> str:
        """Update the breaker for a failed call; log the kind of error, never its body."""
        status = getattr(exc, "status_code", None)
        if isinstance(exc, RateLimitError):
            wait = retry_after_s(exc.response.headers)
            self.breaker.trip(wait)
            log.warning("LLM endpoint rate-limited (429); skipping it for %.1f s",
                        self.breaker.cooldown_s if wait is None else wait)
            return "rate_limited"
        if isinstance(exc, APIStatusError) and status is not None and (
                status < 500 and status not in _FAILURE_STATUSES):
            self.breaker.record_success()  # the endpoint is up; it refused this one request
            log.warning("LLM endpoint refused a request: HTTP %s", status)
            return "rejected"
        self.breaker.record_failure()
        kind = "timeout" if isinstance(exc, APITimeoutError) else (
            "connection error" if isinstance(exc, APIConnectionError) else type(exc).__name__)
        log.warning("LLM call failed: %s%s (breaker %s)", kind,
                    f" HTTP {status}" if status else "", self.breaker.state)
        return "failure"

    def _usage(self, response: Any) -> tuple[int, int, float]:
        usage = getattr(response, "usage", None)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = prompt / 1000 * self.price_in + completion / 1000 * self.price_out
        with self._lock:
            self._stats.prompt_tokens += prompt
            self._stats.completion_tokens += completion
            self._stats.cost_usd += cost
        self.budget.add(cost)
        return prompt, completion, cost

    def _answer(self, response: Any, labels: list[str]) -> tuple[LLMAnswer | None, str]:
        prompt, completion, cost = self._usage(response)
        content = _content(response)
        parsed = parse_answer(content, labels) if isinstance(content, str) else None
        if parsed is None:
            log.info("LLM answer unusable (%d chars): no candidate label in a JSON object",
                     len(content or ""))
            return None, "invalid"
        label, confidence, explanation = parsed
        if leaks_prompt(explanation):
            with self._lock:
                self._stats.prompt_echoes += 1
            explanation = f"chosen by the LLM among {len(labels)} candidate labels"
        return LLMAnswer(label=label, confidence=confidence, explanation=explanation,
                         cost_usd=cost, prompt_tokens=prompt, completion_tokens=completion,
                         model=str(getattr(response, "model", "") or self.model)), "ok"

    def _finish(self, outcome: str, t0: float) -> None:
        counter = "failures" if outcome == "failure" else outcome
        with self._lock:
            setattr(self._stats, counter, getattr(self._stats, counter) + 1)
        if self.on_event is not None:
            with contextlib.suppress(Exception):  # a metrics hook must not break a call
                self.on_event(outcome, time.perf_counter() - t0)


_BACKOFF = wait_random_exponential(multiplier=0.2, max=2.0)


def _retryable(exc: BaseException) -> bool:
    """429 and 5xx may pass on a second try. A refused connection (the endpoint is down) or a
    timeout (another full wait would break the deadline) is left to the breaker, and other
    4xx never pass."""
    if isinstance(exc, RateLimitError):
        return True
    return isinstance(exc, APIStatusError) and exc.status_code >= 500


def _content(response: Any) -> str | None:
    choices = getattr(response, "choices", None) or []
    return choices[0].message.content if choices else None


def _client(settings: Settings, api_key: str | None) -> OpenAI:
    """OpenAI, or Azure OpenAI when ``CCA_LLM_AZURE_API_VERSION`` is set (the base URL is
    then the resource endpoint and the model the deployment name)."""
    if settings.llm_azure_api_version:
        return AzureOpenAI(azure_endpoint=settings.llm_base_url,
                           api_version=settings.llm_azure_api_version,
                           api_key=api_key or "not-needed", max_retries=0,
                           timeout=settings.llm_timeout_s)
    return OpenAI(base_url=settings.llm_base_url, api_key=api_key or "not-needed",
                  timeout=settings.llm_timeout_s, max_retries=0)

"""LLM explanations on request, produced after the answer, off the request path.

Every decision is explained at once from what the cascade already knows (rule, neighbours,
top classes); a caller who also wants the LLM's words asks ``/explain`` with
``"llm_explanation": true`` and reads them later from ``GET /explanations/{ticket_id}``. The
LLM sees only the redacted text. An explanation goes through the audit spool, so it is as
durable as the decision it belongs to (same ticket id and redacted-text hash).
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cascade.llm_stage import LLMStage
from cca.tickets import Decision, Ticket
from redaction import Sanitizer

log = logging.getLogger("cca.serving.explainer")

Status = Literal["pending", "not_requested", "unavailable", "busy", "not_routed"]


@dataclass(frozen=True)
class _Job:
    ticket: Ticket
    decision: Decision


def evidence(d: Decision) -> str:
    """What the cascade based the decision on, in words (ids and labels only, no text)."""
    parts = [f"answered by the {d.stage} stage with confidence {d.confidence:.2f}"]
    if d.rule_id:
        parts.append(f"rule {d.rule_id} matched")
    if d.top_classes:
        parts.append("classifier's top classes: " + ", ".join(
            f"{label} {p:.2f}" for label, p in d.top_classes))
    if d.neighbours:
        parts.append("labels of similar past tickets: " + ", ".join(
            n.label for n in d.neighbours[:5]))
    return "; ".join(parts)


class Explainer:
    def __init__(self, llm: LLMStage, sanitizer: Sanitizer,
                 append: Callable[[list[dict[str, Any]]], None],
                 available: Callable[[], bool], max_queue: int = 100,
                 keep: int = 1000) -> None:
        """``available``: whether the LLM would be called now (``Cascade.llm_can_answer``)."""
        self.llm, self.sanitizer, self.append = llm, sanitizer, append
        self.available = available
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="cca-explainer", daemon=True)
        self.done = self.failed = self.dropped = 0

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout_s)

    def submit(self, ticket: Ticket, decision: Decision) -> Status:
        """Queue an explanation; what the caller is told about it."""
        if decision.label is None:
            return "not_routed"
        if not self.available():
            return "unavailable"
        try:
            self._queue.put_nowait(_Job(ticket, decision))
        except queue.Full:
            self.dropped += 1
            return "busy"
        return "pending"

    def stats(self) -> dict[str, int]:
        """written, failed (no answer, or one that recited the instructions), dropped (queue
        full), queued."""
        return {"written": self.done, "failed": self.failed, "dropped": self.dropped,
                "queued": self._queue.qsize()}

    def recent(self, ticket_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._recent.get(ticket_id)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._explain(job)
            except Exception:  # one bad job must not stop the thread
                self.failed += 1
                log.exception("LLM explanation failed")

    def _explain(self, job: _Job) -> None:
        d = job.decision
        subject, body = self.sanitizer.redact_many([job.ticket.subject, job.ticket.body])
        text = "\n".join(p for p in (subject.text, body.text) if p)
        answer = self.llm.explain(text, d.label or "", evidence(d))
        if answer is None:
            self.failed += 1
            return
        record = {"kind": "explanation", "record_id": str(uuid.uuid4()),
                  "ticket_id": d.ticket_id, "text_hash": d.text_hash or "",
                  "label": d.label, "explanation": answer.explanation,
                  "model": answer.model, "prompt_tokens": answer.prompt_tokens,
                  "completion_tokens": answer.completion_tokens, "cost_usd": answer.cost_usd,
                  "at": datetime.now(UTC).isoformat()}
        self.append([record])
        with self._lock:
            self._recent[d.ticket_id] = record
            self._recent.move_to_end(d.ticket_id)
            while len(self._recent) > self._keep:
                self._recent.popitem(last=False)
        self.done += 1

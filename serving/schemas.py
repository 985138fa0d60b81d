"""The HTTP contract: request bodies wrap the ticket, answers say who answered and how sure.

Strict models (unknown fields refused, no type coercion of strings to numbers) so a caller's
mistake is a 4xx naming the field, not a silently different ticket.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cca.tickets import Decision, Priority, Stage, Ticket, no_nul
from redaction.sanitizer import normalise

_TEXT_MAX = 20_000


class TicketIn(BaseModel):
    """A ticket as a ticketing system sends it; ``subject`` + ``body`` is what is classified."""

    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True,
                              json_schema_extra={"examples": [{
                                  "id": "INC0012345", "subject": "Card declined",
                                  "body": "My card was declined at the shop this morning.",
                                  "customer_ref": "CUST-123456", "priority": "normal"}]})

    id: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$",
                    description="The ticketing system's id; the idempotency key with the content.")
    subject: str = Field(default="", max_length=1_000)
    body: str = Field(default="", max_length=_TEXT_MAX)
    source: str = Field(default="api", min_length=1, max_length=100,
                        pattern=r"^[^\x00-\x1f\x7f]+$")
    customer_ref: str | None = Field(default=None, min_length=1, max_length=200,
                                     pattern=r"^[^\x00-\x1f\x7f]+$")
    created_at: datetime | None = Field(default=None, description="ISO 8601; default: now.")
    priority: Priority = "normal"
    metadata: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, max_length=50,
        description="Flat key/value pairs (no control characters); kept with the ticket.")

    _no_nul = field_validator("subject", "body")(no_nul)

    @field_validator("metadata")
    @classmethod
    def _plain_metadata(cls, v: dict) -> dict:
        # PostgreSQL's jsonb cannot hold NUL; other control characters have no business here.
        for key, value in v.items():
            for text in (key, value if isinstance(value, str) else ""):
                if any((ord(c) < 32 and c not in "\t\n\r") or c == "\x7f" for c in text):
                    raise ValueError(f"metadata {key!r:.40} contains a control character")
        return v

    @field_validator("created_at", mode="before")
    @classmethod
    def _iso(cls, v: Any) -> Any:
        # strict mode refuses strings for datetimes; JSON has no datetime type, so parse ISO.
        if isinstance(v, str):
            try:
                return datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValueError("created_at must be an ISO 8601 date-time") from exc
        return v

    def to_ticket(self) -> Ticket:
        """The cascade's ticket, with only the fields the caller gave marked as set."""
        if not normalise(f"{self.subject} {self.body}"):
            raise ValueError("ticket has no text: subject and body are empty (or only "
                             "whitespace, control or zero-width characters)")
        given = self.model_dump(exclude_unset=True, exclude_none=True)
        given.setdefault("source", "api")
        return Ticket.model_validate(given)


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ticket: TicketIn


class ExplainRequest(ClassifyRequest):
    llm_explanation: bool = Field(default=False, description="Also have the LLM explain the "
                                  "decision, after the answer: read it later from "
                                  "GET /explanations/{ticket_id}.")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tickets: list[TicketIn] = Field(min_length=1)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)
    ticket_id: str = Field(min_length=1, max_length=200)
    label: str = Field(min_length=1, max_length=200, description="The validated intent label.")


class ErasureRequest(BaseModel):
    """The reference travels in the body, never in the URL: a path is written to proxies'
    access logs and BentoML's metrics labels, where erasure cannot reach it."""

    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=True)
    customer_ref: str = Field(min_length=1, max_length=200,
                              description="The customer's reference, in any spelling.")


class DecisionOut(BaseModel):
    """Where the ticket goes; ``needs_review`` = no stage was confident enough to route it."""

    ticket_id: str
    label: str | None
    department: str | None
    urgency: str
    sla_breach: bool
    needs_review: bool
    confidence: float
    stage: Stage
    model_version: str
    cost_usd: float
    replayed: bool = Field(description="True: the stored decision for this ticket id and "
                                       "content, not a new classification.")
    suggestion: str | None = Field(
        default=None, description="A review's label proposed by the LLM but not trusted to "
        "route the ticket (endpoint not calibrated, or measured below the target precision "
        "for answers like this one); for the reviewer.")
    suggestion_confidence: float | None = Field(
        default=None, description="The LLM's own confidence in its suggestion (not a "
        "measured precision).")

    @classmethod
    def of(cls, d: Decision, replayed: bool) -> DecisionOut:
        return cls(ticket_id=d.ticket_id, label=d.label, department=d.department,
                   urgency=d.urgency, sla_breach=d.sla_breach, needs_review=d.stage == "review",
                   confidence=d.confidence, stage=d.stage, model_version=d.model_version,
                   cost_usd=round(d.cost_usd, 8), replayed=replayed,
                   suggestion=d.suggestion, suggestion_confidence=d.suggestion_confidence)


class NeighbourOut(BaseModel):
    ticket_id: str
    label: str
    similarity: float


class ExplanationOut(DecisionOut):
    reason: str = Field(description="Why this stage answered (or why none did).")
    rule_id: str | None
    neighbours: list[NeighbourOut]
    top_classes: list[tuple[str, float]] = Field(description="Classifier's best classes with "
                                                             "calibrated probabilities.")
    llm_explanation: str | None
    llm_explanation_status: Literal["included", "pending", "not_requested", "unavailable",
                                    "busy", "not_routed"] = Field(
        default="not_requested", description="included: the LLM answered the ticket; "
        "pending: being written, see GET /explanations/{ticket_id}; unavailable: no LLM, its "
        "breaker is open or the day's budget is spent; busy: queue full, ask again; "
        "not_routed: the ticket went to review.")
    timings_ms: dict[str, float]

    @classmethod
    def explain(cls, d: Decision, replayed: bool) -> ExplanationOut:
        base = DecisionOut.of(d, replayed).model_dump()
        return cls(**base, reason=d.reason, rule_id=d.rule_id,
                   neighbours=[NeighbourOut(**n.model_dump()) for n in d.neighbours],
                   top_classes=d.top_classes,
                   llm_explanation=d.reason if d.stage == "llm" else None,
                   llm_explanation_status="included" if d.stage == "llm" else "not_requested",
                   timings_ms={k: round(v, 3) for k, v in d.timings_ms.items()})


class ClassifyResponse(BaseModel):
    decision: DecisionOut
    request_id: str


class BatchResponse(BaseModel):
    decisions: list[DecisionOut]
    request_id: str


class ExplainResponse(BaseModel):
    explanation: ExplanationOut
    request_id: str


class ExplanationRow(BaseModel):
    ticket_id: str
    text_hash: str = Field(description="Hash of the redacted text the decision was made on.")
    label: str
    explanation: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    created_at: datetime | str


class ExplanationsResponse(BaseModel):
    ticket_id: str
    explanations: list[ExplanationRow]
    request_id: str


class FeedbackResponse(BaseModel):
    ticket_id: str
    label: str
    message: str
    request_id: str


class ErasureResponse(BaseModel):
    erased: Literal[True] = True
    counts: dict[str, int]
    request_id: str


class ErrorOut(BaseModel):
    error: str = Field(description="What was wrong, in one sentence.")
    request_id: str
    detail: list[dict[str, Any]] | None = None

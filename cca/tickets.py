"""The ticket and decision records every stage reads and writes."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Priority = Literal["low", "normal", "high", "critical"]
Stage = Literal["rules", "cache", "classifier", "llm", "review"]
STAGES: tuple[Stage, ...] = ("rules", "cache", "classifier", "llm", "review")


def ticket_text(subject: str, body: str) -> str:
    """The text every stage reads; one definition so embeddings and classifiers agree."""
    return f"{subject}\n{body}".strip() if subject else body.strip()


def no_nul(cls: type, v: str) -> str:
    """PostgreSQL text cannot hold NUL: refused at the edge, with a message, not a 500."""
    if "\x00" in v:
        raise ValueError("text contains a NUL byte")
    return v


class Ticket(BaseModel):
    """A service-desk ticket as it arrives; the text the cascade reads is subject + body."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: str = Field(min_length=1, max_length=200)
    source: str = Field(default="api", min_length=1, max_length=100)
    subject: str = Field(default="", max_length=1_000)
    body: str = Field(default="")
    customer_ref: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    priority: Priority = "normal"
    metadata: dict[str, Any] = Field(default_factory=dict)

    _no_nul = field_validator("subject", "body")(no_nul)

    @field_validator("created_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v if v.tzinfo else v.replace(tzinfo=UTC)

    @staticmethod
    def new_id() -> str:
        return f"tkt-{uuid.uuid4().hex[:20]}"

    @property
    def text(self) -> str:
        return ticket_text(self.subject, self.body)

    def content_hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


class Neighbour(BaseModel):
    ticket_id: str
    label: str
    similarity: float


class Decision(BaseModel):
    """What the cascade answered for one ticket, with enough context to audit and explain it."""

    ticket_id: str
    label: str | None
    department: str | None
    urgency: str = "normal"
    sla_breach: bool = False
    confidence: float
    stage: Stage
    rule_id: str | None = None
    neighbours: list[Neighbour] = Field(default_factory=list)
    top_classes: list[tuple[str, float]] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    model_version: str
    cost_usd: float = 0.0
    reason: str = ""
    # sha256 of the redacted text the later stages read: the audit's link to the text.
    text_hash: str | None = None
    # A review's LLM answer that was not trusted to route the ticket (its endpoint is not
    # calibrated, or the answer fell in a cell measured below the target precision): shown
    # to the reviewer, never acted on.
    suggestion: str | None = None
    suggestion_confidence: float | None = None

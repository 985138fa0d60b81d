"""The LLM + RAG stage's contract. Until an endpoint is configured it answers nothing,
so the tickets that reach it go to human review rather than to a guess."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cca.tickets import Neighbour, Ticket


@dataclass(frozen=True)
class LLMAnswer:
    label: str
    confidence: float
    explanation: str
    cost_usd: float = 0.0


class LLMStage(Protocol):
    name: str

    def classify(
        self, ticket: Ticket, neighbours: list[Neighbour], labels: list[str]
    ) -> LLMAnswer | None:
        """A label from ``labels`` with a confidence and an explanation, or None to abstain."""
        ...


class DisabledLLMStage:
    """No LLM endpoint configured: abstain on every ticket."""

    name = "disabled"

    def classify(
        self, ticket: Ticket, neighbours: list[Neighbour], labels: list[str]
    ) -> LLMAnswer | None:
        return None

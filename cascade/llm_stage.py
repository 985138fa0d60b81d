"""The LLM + RAG stage's contract. Until an endpoint is configured it answers nothing,
so the tickets that reach it go to human review rather than to a guess."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cascade.llm_prompt import Example
from cca.tickets import Neighbour, Ticket


@dataclass(frozen=True)
class LLMAnswer:
    label: str
    confidence: float
    explanation: str
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""


class LLMStage(Protocol):
    name: str

    def classify(
        self, ticket: Ticket, neighbours: list[Neighbour], labels: list[str],
        ranked: list[str] | None = None, examples: list[Example] | None = None,
        descriptions: dict[str, str] | None = None,
    ) -> LLMAnswer | None:
        """A label from ``labels`` with a confidence and an explanation, or None to abstain.

        ``ranked``: labels the earlier stages found likely, best first; ``examples``: the
        nearest labelled tickets' redacted texts (retrieval-augmented few-shot)."""
        ...

    def explain(self, text: str, label: str, evidence: str) -> LLMAnswer | None:
        """Why a decision already made fits ``text`` (redacted), or None."""
        ...


class DisabledLLMStage:
    """No LLM endpoint configured: abstain on every ticket."""

    name = "disabled"

    def classify(
        self, ticket: Ticket, neighbours: list[Neighbour], labels: list[str],
        ranked: list[str] | None = None, examples: list[Example] | None = None,
        descriptions: dict[str, str] | None = None,
    ) -> LLMAnswer | None:
        return None

    def explain(self, text: str, label: str, evidence: str) -> LLMAnswer | None:
        return None

"""The internal note an agent reads on a routed ticket.

It says which stage decided, how sure it was, the top three classes and the rule or reason,
so an agent can judge the routing at a glance. It never quotes another customer's ticket:
vector-cache neighbours are named by id only. The marker at the end lets the worker find
its own note again after a crash (``Writer.already_written``), so a decision is never
written twice.
"""

from __future__ import annotations

from cca.tickets import Decision


def marker_for(decision_key: str) -> str:
    return f"[cca:{decision_key}]"


def routing_note(decision: Decision, marker: str, *, review: bool) -> str:
    lines = [("Call Centre Agent could not route this ticket with confidence; it needs a "
              "person. Suggestions below.") if review else
             f"Routed by Call Centre Agent to {decision.department or decision.label}."]
    lines.append(f"Stage: {decision.stage}; confidence {decision.confidence:.2f}; "
                 f"label {decision.label or '-'}; department {decision.department or '-'}; "
                 f"urgency {decision.urgency}.")
    top = decision.top_classes[:3]
    if top:
        lines.append("Top classes: " + ", ".join(f"{lb} {p:.2f}" for lb, p in top) + ".")
    if decision.rule_id:
        lines.append(f"Rule: {decision.rule_id}.")
    if review and decision.suggestion:
        lines.append(f"LLM suggestion (not trusted to route it): {decision.suggestion}.")
    if decision.stage == "llm":
        # The LLM's own words were written from other customers' (redacted) tickets shown
        # as examples, and from this ticket, which may try to instruct it: not repeated.
        lines.append("Reason: chosen by the LLM among the candidate classes.")
    elif decision.reason:
        lines.append(f"Reason: {_one_line(decision.reason)}.")
    if decision.neighbours:
        lines.append("Similar tickets: " + ", ".join(
            f"{n.ticket_id} ({n.label}, {n.similarity:.2f})" for n in decision.neighbours[:3])
            + ".")
    lines.append(f"Model {decision.model_version}. {marker}")
    return "\n".join(lines)


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"

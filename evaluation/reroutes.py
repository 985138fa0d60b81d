"""How often people move what the product routed: the loop's promise, measured.

A reroute is an agent changing the routed group of a ticket the product routed itself (not
one it sent to review: assigning those is review's job). The product promises fewer than
5 % of auto-routed tickets rerouted; the rate is per ticketing system and per cascade
stage, so a stage that routes badly shows up on its own.
"""

from __future__ import annotations

from typing import Any

from cca.store import Database
from cca.store.intake_repo import reroutes

TARGET = 0.05


def reroute_report(db: Database) -> dict[str, Any]:
    """Per source and stage: routed, rerouted, rate; the overall rate against the target."""
    with db.begin() as conn:
        rows = reroutes(conn)
    routed = sum(r.routed for r in rows)
    rerouted = sum(r.rerouted for r in rows)
    rate = rerouted / routed if routed else None
    return {
        "routed": routed, "rerouted": rerouted,
        "rate": round(rate, 4) if rate is not None else None,
        "target": TARGET, "within_target": rate is None or rate < TARGET,
        "by_stage": [{"source": r.source, "stage": r.stage, "routed": r.routed,
                      "rerouted": r.rerouted, "rate": round(r.rate, 4)} for r in rows],
    }

"""Analyst-editable routing and urgency rules (YAML) and the engine that applies them."""

from rules.engine import RuleHit, RuleSet, load_rules

__all__ = ["RuleHit", "RuleSet", "load_rules"]

"""What the product writes back to each ticketing system, from analysts' YAML.

``rules/routing.yaml`` sits beside the department map: per vendor, the group each department
goes to (ServiceNow ``assignment_group`` sys_id, Zendesk ``group_id``, Jira's configured
group field, e.g. the request type or team), optionally a finer group per label, the triage
group for tickets sent to review, and how our urgency maps to the vendor's priority field.
Checked once at start: a department the department map does not know is a one-line error,
since a typo would otherwise route tickets nowhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cca.errors import ConfigError, read_yaml

VENDORS = ("servicenow", "zendesk", "jira")
URGENCIES = ("low", "normal", "high", "critical")


@dataclass(frozen=True)
class VendorRouting:
    """One vendor's side of the map; every group value is kept as text."""

    groups: dict[str, str] = field(default_factory=dict)        # department -> group
    label_groups: dict[str, str] = field(default_factory=dict)  # label -> group (optional)
    review_group: str | None = None
    urgency: dict[str, str] = field(default_factory=dict)       # our urgency -> vendor value
    group_field: str | None = None                              # Jira: the field written

    def group_for(self, label: str | None, department: str | None) -> str | None:
        if label is not None and label in self.label_groups:
            return self.label_groups[label]
        return self.groups.get(department) if department is not None else None

    def back(self, group: str) -> tuple[str | None, str | None]:
        """(label, department) a group value maps back to; None where it is ambiguous.

        A label only when exactly one label routes to that group; a department only when
        exactly one department does (agents' corrections become labels only when certain).
        """
        labels = [lb for lb, g in self.label_groups.items() if g == group]
        depts = [d for d, g in self.groups.items() if g == group]
        return (labels[0] if len(labels) == 1 else None,
                depts[0] if len(depts) == 1 else None)


@dataclass(frozen=True)
class RoutingMap:
    vendors: dict[str, VendorRouting]
    label_departments: dict[str, str] = field(default_factory=dict)
    review_tag: str = "cca_needs_review"
    routed_tag: str = "cca_routed"
    source: str = "defaults"

    def vendor(self, name: str) -> VendorRouting:
        return self.vendors.get(name) or VendorRouting()

    def check_departments(self, known: Iterable[str]) -> None:
        """Every department the map names must be one the department map knows."""
        known = set(known)
        for name, vendor in self.vendors.items():
            unknown = sorted(set(vendor.groups) - known)
            if unknown:
                raise ConfigError(f"{self.source}: {name}.departments names unknown "
                                  f"department(s): {', '.join(unknown)}; known: "
                                  f"{', '.join(sorted(known)) or '(none)'}")


def _strings(path: Path, where: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(v, (str, int)) and not isinstance(v, bool) for v in value.values()):
        raise ConfigError(f"{path}: {where} must map names to ids (text or numbers)")
    return {str(k): str(v) for k, v in value.items()}


def _vendor(path: Path, name: str, raw: Any) -> VendorRouting:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {name} must be a mapping")
    extra = set(raw) - {"departments", "labels", "review_group", "urgency", "group_field"}
    if extra:
        raise ConfigError(f"{path}: {name} has unknown key(s): {', '.join(sorted(extra))}")
    urgency = _strings(path, f"{name}.urgency", raw.get("urgency"))
    odd = sorted(set(urgency) - set(URGENCIES))
    if odd:
        raise ConfigError(f"{path}: {name}.urgency names {', '.join(odd)}; "
                          f"use {', '.join(URGENCIES)}")
    review = raw.get("review_group")
    if name == "jira" and not raw.get("group_field") and (raw.get("departments") or review):
        raise ConfigError(f"{path}: jira.group_field must name the field groups are written "
                          "to (e.g. the request type or team custom field)")
    return VendorRouting(
        groups=_strings(path, f"{name}.departments", raw.get("departments")),
        label_groups=_strings(path, f"{name}.labels", raw.get("labels")),
        review_group=str(review) if review is not None else None,
        urgency=urgency,
        group_field=str(raw["group_field"]) if raw.get("group_field") else None)


def load_routing_map(path: Path) -> RoutingMap:
    """The routing map at ``path``; every problem is one ``ConfigError`` line."""
    data = read_yaml(path, "routing map")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with servicenow/zendesk/jira keys")
    unknown = set(data) - {*VENDORS, "tags"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; "
                          f"expected {', '.join(VENDORS)}, tags")
    tags = data.get("tags") or {}
    if not isinstance(tags, dict):
        raise ConfigError(f"{path}: tags must map review/routed to a tag name")
    vendors = {name: _vendor(path, name, data[name]) for name in VENDORS if data.get(name)}
    return RoutingMap(vendors, review_tag=str(tags.get("review", "cca_needs_review")),
                      routed_tag=str(tags.get("routed", "cca_routed")), source=str(path))

"""Which department handles which label: a YAML map, or the label itself when there is none."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cca.errors import ConfigError, read_yaml


@dataclass(frozen=True)
class DepartmentMap:
    mapping: dict[str, str] = field(default_factory=dict)
    source: str = "identity"

    def department(self, label: str | None) -> str | None:
        if label is None:
            return None
        return self.mapping.get(label, label) if self.mapping else label

    def check_covers(self, labels: Iterable[str]) -> None:
        """A label the map forgot would silently route to a department named after itself."""
        if not self.mapping:
            return
        missing = sorted(set(labels) - set(self.mapping))
        if missing:
            shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
            raise ConfigError(
                f"{self.source}: {len(missing)} label(s) in no department: {shown}"
            )


def load_department_map(path: Path | None) -> DepartmentMap:
    if path is None:
        return DepartmentMap()
    data = read_yaml(path, "department map")
    depts = data.get("departments") if isinstance(data, dict) else None
    if not isinstance(depts, dict) or not depts:
        raise ConfigError(f"{path}: expected a 'departments' mapping of name -> list of labels")
    mapping: dict[str, str] = {}
    for dept, labels in depts.items():
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ConfigError(f"{path}: department {dept!r} must list label strings")
        for label in labels:
            if label in mapping:
                raise ConfigError(
                    f"{path}: label {label!r} is in both {mapping[label]!r} and {dept!r}"
                )
            mapping[label] = str(dept)
    return DepartmentMap(mapping=mapping, source=str(path))

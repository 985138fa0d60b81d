"""Errors a user can act on: the CLI prints them as one line, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class CCAError(Exception):
    """A problem with input, configuration or state that the user can fix."""

    exit_code = 2


class InputError(CCAError):
    """A file, record or argument that cannot be accepted as given."""


class UnknownTicket(InputError):
    """A ticket id the store does not hold (HTTP 404; another worker may still be writing it)."""


class ConfigError(CCAError):
    """A settings value, rule file or department map that is invalid."""


class StateError(CCAError):
    """The store or model is not in the state the command needs (e.g. no model trained yet)."""

    exit_code = 3


def describe_yaml_error(exc: Exception) -> str:
    """'line N: problem' from a PyYAML error, without its multi-line context dump."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}: {problem}" if mark else str(problem)


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document at ``path``; unreadable or malformed is one ``ConfigError`` line
    naming ``what`` it was meant to be (a department map, the routing map...)."""
    # deferred: PyYAML is needed only by the commands that read configuration files
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {describe_yaml_error(exc)}") from exc

"""JSON as RFC 8259 defines it: Python's ``json`` also accepts NaN and Infinity, which are not
JSON and which PostgreSQL's jsonb would silently store as null. Every body the service or a
webhook reads goes through ``loads``."""

from __future__ import annotations

import json
import math
from typing import Any


class NotJSON(ValueError):
    """A body that is not RFC 8259 JSON; the message names where."""


def _refuse_constant(name: str) -> Any:
    raise NotJSON(f"{name} is not a JSON value (RFC 8259); send a number or null")


def finite_float(text: str) -> float:
    """A JSON number as a float, refusing one too large for a float (``1e999``), which
    Python would otherwise read as infinity."""
    value = float(text)
    if math.isinf(value):
        raise NotJSON(f"number {text[:40]} is too large (not a finite number)")
    return value


def loads(body: bytes | str) -> Any:
    """Parse ``body``; NaN, Infinity, -Infinity, numbers beyond a float's range, nesting
    deeper than Python's parser can take and malformed JSON raise ``NotJSON``."""
    try:
        return json.loads(body, parse_constant=_refuse_constant, parse_float=finite_float)
    except NotJSON:
        raise
    except RecursionError:
        raise NotJSON("JSON nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise NotJSON("body is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise NotJSON(f"malformed JSON at line {exc.lineno} column {exc.colno}: "
                      f"{exc.msg}") from exc

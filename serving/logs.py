"""JSON log lines with the request's correlation id; never ticket text.

Handlers log ids, stages, labels, timings and error kinds only: a ticket's text (raw or
redacted), a token or a customer reference never reaches a log call, and the
formatter keeps only the fields listed below, so a stray ``extra=`` cannot add one.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from datetime import UTC, datetime

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
FIELDS = ("endpoint", "status", "ms", "tickets", "stages", "caller", "replays", "error",
          "model", "pending", "source")


def correlation_id(header: str | None) -> str:
    """The caller's X-Request-ID when it is a plain token, else a new one (no log injection)."""
    if header and _SAFE_ID.match(header):
        return header
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": request_id.get(),
            "message": record.getMessage(),
        }
        for key in FIELDS:
            if key in record.__dict__:
                line[key] = record.__dict__[key]
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = record.exc_info[0].__name__
        return json.dumps(line, default=str)


def configure(level: str = "INFO") -> None:
    """JSON lines on stderr for the ``cca`` loggers (BentoML keeps its own access log)."""
    logger = logging.getLogger("cca")
    if any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False

"""``cca sanitize``: redact PII from the subject and body of a JSONL file of tickets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import console, progress_bar, settings


def sanitize_cmd(
    in_path: Annotated[Path, typer.Argument(help="JSONL of tickets (subject/body redacted).")],
    out_path: Annotated[Path, typer.Argument(help="Where to write the redacted JSONL.")],
) -> None:
    """Replace PII in subject and body with typed placeholders; other fields are kept."""
    # deferred: the detectors compile their patterns and may load spaCy
    from pipelines.sanitize_file import sanitize_file
    from redaction import Sanitizer

    sanitizer = Sanitizer.from_settings(settings())
    with progress_bar(f"sanitizing {in_path.name}") as advance:
        report = sanitize_file(in_path, out_path, sanitizer, progress=advance)
    found = ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items())) or "none"
    console.print(f"sanitized {report.records} records into {out_path}: {report.changed} "
                  f"changed; redacted {found}", highlight=False)

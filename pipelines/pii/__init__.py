"""PII redaction: typed placeholders, keyed customer pseudonyms, text normalisation."""

from pipelines.pii.detectors import Span
from pipelines.pii.sanitizer import Redacted, Sanitizer, normalise

__all__ = ["Redacted", "Sanitizer", "Span", "normalise"]

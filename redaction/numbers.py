"""Context for bare digit runs: is 41936582 an account number, 0230348485 a phone number, or a
reference the classifier needs (and must keep)?

A run of digits says little by itself, so the nearest cue word before it decides: in "my
account ... the reference it gave me is 12345678" the number is a reference, in "reference
for account 12345678" it is an account. Accounts may also be named just after the number
("41936582 is my current account", "51075789 (that's my savings)"), or follow a sort code.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_NUM_SUFFIX = r"(?:\s?(?:number|numer|num|no\.?|#|id))?"
ACCOUNT_CUE = re.compile(
    r"\b(?:account|acc(?:oun|ount|t|nt)?|acount|accout|a/c|member(?:ship)?|roll|"
    rf"sort[ -]?code|iban|savings|building society){_NUM_SUFFIX}\b", re.I)
REF_CUE = re.compile(
    r"\b(?:ref(?:erence)?|refs|transaction|txn|order|case|ticket|dispute|invoice|claim|"
    r"tracking|confirmation|booking|incident|complaint|parcel|receipt|transcript|chat)"
    rf"{_NUM_SUFFIX}\b", re.I)
PHONE_CUE = re.compile(
    r"\b(?:call(?:ed)?|phone|tel|telephone|mobile|cell|text|reach|contact|landline|whatsapp|"
    r"fax|ring|number)\b", re.I)
ACCOUNT_RE = re.compile(r"(?<![\w.,£$€-])\d{4}[ -]?\d{4}(?:\d{1,9})?(?![\w-]|[.,]\d)")
#: A sort code just before the number: "20-45-77 41936582", "47-82-72 / 5048 8264".
_SORT_BEFORE = re.compile(r"\b\d{2}-\d{2}-\d{2}[ ,/:-]{1,4}$")
#: The account named right after the number.
_ACCOUNT_AFTER = re.compile(
    r"[ \t]*[(,-]?[ \t]*(?:is|=|that'?s|it'?s)?[ \t]*(?:my|the|our|a|his|her)?[ \t]*"
    r"(?:[a-z]+[ \t]+)?(?:account|a/c|acct|savings)\b", re.I)


def last_cue(text: str, start: int, cue: re.Pattern[str], window: int = 40) -> int:
    """End offset of the last ``cue`` match in the ``window`` characters before ``start``."""
    end = -1
    for m in cue.finditer(text, max(0, start - window), start):
        end = m.end()
    return end


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


def account_spans(text: str) -> Iterator[tuple[int, int]]:
    """8-17 digit runs that an account cue (nearer than any reference cue) introduces."""
    for m in ACCOUNT_RE.finditer(text):
        if len(_digits(m.group())) > 17:
            continue
        ref = last_cue(text, m.start(), REF_CUE)
        acc = last_cue(text, m.start(), ACCOUNT_CUE)
        if acc > ref or (ref < 0 and (
                _SORT_BEFORE.search(text, max(0, m.start() - 14), m.start())
                or _ACCOUNT_AFTER.match(text, m.end()))):
            yield m.start(), m.end()


def reference_nearer(text: str, start: int) -> bool:
    """Whether a reference cue is nearer than any phone cue: "order number 0230348485"."""
    ref = last_cue(text, start, REF_CUE)
    return ref >= 0 and ref >= last_cue(text, start, PHONE_CUE, 30)


def bare_phone_ok(text: str, start: int) -> bool:
    """A bare 10-11 digit run is a phone number only with a phone cue nearer than a ref cue."""
    phone = last_cue(text, start, PHONE_CUE, 30)
    return phone >= 0 and phone > last_cue(text, start, REF_CUE)

"""Person names from the cues a ticket gives around them, beyond NER.

Long tickets name people in predictable places: greetings and sign-offs ("Hi Grace,",
"Regards,\nSiobhan O'Neill"), introductions ("my name is", "account holder:"), relations
("my wife Rose", "Daniel Chen (my son)"), chat speaker labels ("[09:14] Oluwaseun:") and mail
headers ("From: Jane Doe <...>"). NER misses many of these (lower case, non-English names,
names that are also words), so each cue is a rule here; ``mentions`` then finds the other
mentions of a name found once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from redaction.detectors import Span
from redaction.lexicon import PARTICLES, STOP, TITLES, TOKEN, Lexicon, fold

_REL = (r"husband|wife|partner|son|daughter|mum|mom|mother|dad|father|brother|sister|"
        r"colleague|flatmate|carer|friend|manager|boss|landlord|landlady|grandson|"
        r"granddaughter|nan|gran|grandma|grandad|uncle|aunt|auntie|cousin|fianc[eé]e?|"
        r"girlfriend|boyfriend|niece|nephew|neighbour|neighbor|tenant|employer")
# Firm cues: what follows is a name even in lower case and even if it is also a word.
_FIRM = re.compile(
    r"(?:\bmy name is|\bmy name's|\bname is|\bfull name:|\bname:|\baccount holder(?: is|:)?|"
    r"\bin the name of|\bdear|\bsigned:)(?!\w)\s*", re.I)
# Strong cues: a capitalised word after them is a name even if it is also a word.
_STRONG = re.compile(
    r"(?:\bon behalf of(?: my (?:" + _REL + r"))?|^from:|^to:|^cc:|\bcaller:|"
    r"\bagent:|\badvisor:|\badviser:|\bcustomer:|\bhi|\bhello|\bhey|"
    r"\bthanks,?|\bthank you,?|\bcheers,?|\bregards,|\bsincerely,|\bmany thanks,?|"
    r"\bthrough to|\bspeaking (?:to|with)|\bspoke (?:to|with)|\bspoken to|\btalked to|"
    r"\bcolleague|\bmy (?:" + _REL + r"),?|\bcalled)(?!\w)\s*"
    r"|\b(?:agent|customer|caller|advisor|adviser|rep|client|member) \(", re.I | re.M)
#: A name alone on a line above a job title or team: "Thanh\nCustomer Operations".
_ROLE_LINE = re.compile(
    r"^(?=[^\W\d_][^\n]{0,40}\n[^\n]{0,40}\b(?:Operations|Support|Team|Manager|Officer|"
    r"Department|Services|Advisor|Adviser|Director|Assistant|Analyst|Lead|Specialist|"
    r"Executive|Coordinator)\b)", re.M)
# Weak cues: only a name that is not also an ordinary word ("I'm Priya", not "I'm Sorry").
_WEAK = re.compile(r"(?:\bi am|\bi'm|\bim|\bthis is)\s+", re.I)
_SIGNOFF = re.compile(
    r"^[> ]*(?:(?:kind |best |warm |many )?regards|thanks|thank you|many thanks|thx|ta|"
    r"cheers|best|best wishes|sincerely|yours (?:sincerely|faithfully|truly)|all the best|"
    r"--)[ ,.!]*\n[> ]*", re.I | re.M)
_LABEL = re.compile(r"^(?P<ts>\[\d{1,2}:\d{2}(?::\d{2})?\] ?)?(?=[^\W\d_][^\n:]{0,40}:)", re.M)
_REVERSE_REL = re.compile(r"\s*[(,]\s*my (?:" + _REL + r")\b", re.I)
def _lower_ok(text: str, m: re.Match[str], lex: Lexicon, firm: bool) -> bool:
    """A lower-case token after a cue: never a stop word; after a firm cue ("my name is",
    "dear", a sign-off line) a word that is not a verb or adjective ("david", "macleod"), or
    even one that ends the phrase ("dear rose,"); after any other cue only a word no
    dictionary knows ("priya")."""
    w = m.group()
    if len(w) < 2 or w in STOP:
        return False
    if not firm:
        return not lex.plain(w)
    return not lex.ordinary(w) or text[m.end():m.end() + 1] in (",", "\n", "")


def _take(text: str, pos: int, lex: Lexicon, *, strong: bool, lower: bool,
          firm: bool = False) -> Span | None:
    """Up to three name tokens from ``pos`` on one line; None unless they look like a name."""
    tokens: list[re.Match[str]] = []
    i = pos
    while len(tokens) < 4:
        m = TOKEN.match(text, i)
        if m is None:
            break
        tokens.append(m)
        nxt = m.end()
        if text.startswith(". ", nxt) and len(m.group()) == 1:
            nxt += 1  # an initial: "Jane P. Doe"
        if not text.startswith(" ", nxt):
            break
        i = nxt + 1
    if tokens and tokens[0].group().casefold().rstrip(".") in TITLES:
        tokens = tokens[1:]
    kept: list[re.Match[str]] = []
    for m in tokens:
        w = m.group()
        if w.casefold() in PARTICLES and kept:
            kept.append(m)
            continue
        if w.casefold() in STOP or fold(w) in STOP or (w.isupper() and len(w) > 1):
            break
        cap = w[0].isupper()
        if cap:
            ok = strong or not lex.ordinary(w) or bool(kept) or len(w) == 1
        else:
            ok = lower and _lower_ok(text, m, lex, firm)
        if ok:
            kept.append(m)
        else:
            break
    while kept and (kept[-1].group().casefold() in PARTICLES or len(kept[-1].group()) == 1):
        kept.pop()
    if not kept or len(kept[0].group()) < 2:
        return None
    return Span(kept[0].start(), kept[-1].end(), "PERSON")


def cue_spans(text: str, lex: Lexicon) -> Iterator[Span]:
    """Names right after strong and weak cues, at sign-off blocks and before "(my wife)"."""
    lower = not any(c.isupper() for c in text)
    for m in _FIRM.finditer(text):
        span = _take(text, m.end(), lex, strong=True, lower=True, firm=True)
        if span:
            yield span
    for m in _ROLE_LINE.finditer(text):
        span = _take(text, m.end(), lex, strong=True, lower=False)
        if span and text.startswith("\n", span.end):
            yield span
    for m in _STRONG.finditer(text):
        span = _take(text, m.end(), lex, strong=True, lower=True)
        if span:
            yield span
    for m in _WEAK.finditer(text):
        span = _take(text, m.end(), lex, strong=False, lower=True)
        if span:
            yield span
    for m in _SIGNOFF.finditer(text):
        span = _take(text, m.end(), lex, strong=True, lower=True, firm=True)
        if span:
            yield span
    for m in _LABEL.finditer(text):
        span = _take(text, m.end(), lex, strong=bool(m.group("ts")), lower=lower)
        # Without a timestamp "Status:" is a form field; only a non-word label is a speaker.
        if span and text.startswith(":", span.end) and (
                m.group("ts") or not lex.plain(text[span.start:span.end])):
            yield span
    for m in _REVERSE_REL.finditer(text):
        before = list(TOKEN.finditer(text, max(0, m.start() - 40), m.start()))
        if not before or before[-1].end() != m.start():
            continue
        # "Daniel Chen (my daughter)", else just "Chen" ("please keep Chen (my son)").
        starts = [before[-1].start()]
        if len(before) > 1 and text[before[-2].end():before[-1].start()] == " ":
            starts.insert(0, before[-2].start())
        for start in starts:
            span = _take(text, start, lex, strong=True, lower=True, firm=True)
            if span and span.end == m.start():
                yield span
                break

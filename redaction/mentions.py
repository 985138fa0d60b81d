"""Other mentions of a person: given names from a gazetteer, names an e-mail address spells
(jane.doe@..., dfernandez@...), and every repeat of a name found once in the same ticket.

Words that are also names (Grace, Bill, Mark, Will) are the trap: a cue makes them a name, but
elsewhere they are redacted only where NER or a neighbouring name agrees, so "Grace period"
and "Will this affect..." stay.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from redaction.detectors import EMAIL_RE, Span
from redaction.lexicon import PARTICLES, STOP, TITLES, TOKEN, Lexicon, fold

_ROLE_LOCALS = frozenset({
    "support", "info", "help", "admin", "noreply", "no-reply", "reply",
    "customer", "service", "billing", "accounts", "account", "hello", "contact", "team", "mail",
    "enquiries", "complaints", "sales", "office",
})


def given_name_spans(text: str, lex: Lexicon) -> Iterator[Span]:
    """Known given names that are no English word ("Priya", "Katarzyna"), with a surname-like
    capitalised word after them; capitalised only, unless the whole ticket is lower case."""
    if not lex.given:
        return
    lower = not any(c.isupper() for c in text)
    for m in TOKEN.finditer(text):
        w = m.group()
        if not (lower or (w[0].isupper() and not w.isupper())):
            continue
        if fold(w) not in lex.given or lex.plain(w):
            continue
        end = m.end()
        nxt = TOKEN.match(text, end + 1) if text.startswith(" ", end) else None
        if nxt and nxt.group()[0].isupper() and not lex.plain(nxt.group()):
            end = nxt.end()
        yield Span(m.start(), end, "PERSON")


def email_names(text: str, lex: Lexicon) -> set[str]:
    """Folded words of ``text`` that an e-mail local part spells ("jane.doe", "dfernandez")."""
    found: set[str] = set()
    bare = EMAIL_RE.sub(lambda e: " " * len(e.group()), text)
    words = {fold(m.group()) for m in TOKEN.finditer(bare)} - {""}
    for m in EMAIL_RE.finditer(text):
        local = m.group().split("@", 1)[0].casefold()
        if local in _ROLE_LOCALS:
            continue
        parts = [fold(p) for p in re.split(r"[._+\-\d]+", local) if len(fold(p)) >= 2]
        for part in parts:
            if part in _ROLE_LOCALS:
                continue
            if part in words and len(part) >= 3:
                found.add(part)
                continue
            # Run-together locals: "dfernandez", "xiaolingpark", "hughesl".
            for w in words:
                if len(w) >= 4 and w in part and not lex.ordinary(w):
                    rest = part.replace(w, "", 1)
                    if len(rest) <= 1 or rest in words:
                        found.add(w)
                        if len(rest) > 2:
                            found.add(rest)
    return found


def propagate(text: str, names: set[str], lex: Lexicon, ner: Iterable[Span],
              taken: Iterable[Span]) -> Iterator[Span]:
    """Every other mention of a name found once. Ordinary words ("Grace", "Will") only where
    NER tags them or a neighbouring word is a known name; dictionary names ("David") only
    capitalised unless the whole ticket is lower case."""
    if not names:
        return
    lower = not any(c.isupper() for c in text)
    ner_ranges = [(s.start, s.end) for s in ner]
    busy = [(s.start, s.end) for s in taken]
    toks = list(TOKEN.finditer(text))
    folded = [fold(t.group()) for t in toks]
    for i, t in enumerate(toks):
        f, w = folded[i], t.group()
        if f not in names or f in STOP or len(f) < 2:
            continue
        if any(b <= t.start() and t.end() <= e for b, e in busy):
            continue
        cap = w[0].isupper()
        if lex.ordinary(w):
            near = any(0 <= j < len(toks) and folded[j] in names and folded[j] != f
                       and toks[j].group()[0].isupper()
                       and text[min(t.end(), toks[j].end()):max(t.start(), toks[j].start())]
                       in (" ", "")
                       for j in (i - 1, i + 1))
            if not (cap and (near or any(b <= t.start() < e for b, e in ner_ranges))):
                continue
        elif f in lex.dictionary and not (cap or lower):
            continue
        yield Span(t.start(), t.end(), "PERSON")


def name_tokens(text: str, spans: Iterable[Span]) -> set[str]:
    """Folded tokens of the found names, titles and particles left out."""
    out: set[str] = set()
    for s in spans:
        for m in TOKEN.finditer(text, s.start, s.end):
            f = fold(m.group())
            if len(f) >= 2 and f not in PARTICLES and f not in TITLES and f not in STOP:
                out.add(f)
    return out

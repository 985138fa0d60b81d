"""Person names: spaCy NER (offline English model, NER pipe only) plus a few cue patterns.

NER alone misses names after titles and in sign-offs and flags brands ("Apple Pay") as
people, so its entities are filtered and a handful of high-precision cues are added.
"""

from __future__ import annotations

import importlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from redaction.context_names import cue_spans
from redaction.detectors import Span
from redaction.lexicon import Lexicon, fold, load_given_names
from redaction.mentions import email_names, given_name_spans, name_tokens, propagate

# Everything but NER is dead weight for us: the small model's NER has its own tok2vec.
_EXCLUDE = ["tagger", "parser", "attribute_ruler", "senter", "morphologizer"]

#: Product, brand and banking words NER is known to mistake for people.
NOT_NAMES = frozenset(w.casefold() for w in (
    "Apple Pay", "Google Pay", "Samsung Pay", "Visa", "Mastercard", "Maestro", "Amex",
    "American Express", "PayPal", "Revolut", "Monzo", "Stripe", "Western Union", "Swift",
    "SEPA", "Bacs", "Chaps", "Siri", "Alexa", "Face ID", "Touch ID", "Pin", "PIN", "Hi",
    "Hello", "Thanks", "Dear", "Regards", "Cheers", "Google", "Apple", "Android", "iPhone",
    "Euro", "Euros", "Dollar", "Pound", "Sterling", "ATM", "Top", "Top Up", "Bitcoin",
    "App", "Card", "Account", "Mastecard", "Yesterday", "Yesterdays", "Today", "Seller",
    "Merchant", "Transfer", "Refund", "Withdrawal", "Support", "Customer", "Bank",
))

_WORD = r"[A-Z][a-z'\u2019-]+"
_TITLE_CUE = re.compile(rf"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Dame)\.? (?P<n>{_WORD}(?: {_WORD})?)")
_INTRO_CUE = re.compile(
    r"\b(?:[Mm]y name is|[Nn]ame:|I am|I'm|[Tt]his is|[Ss]igned|[Rr]egards,|[Tt]hanks,|"
    r"[Ss]incerely,|[Cc]heers,|[Aa]ccount holder:?|on behalf of|[Ss]poke (?:to|with))"
    rf"\s+(?P<n>{_WORD}(?: (?:[A-Z]\.? )?{_WORD}){{0,2}})")
_LEADING_TITLE = re.compile(r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Dame)\.? ")
_AFTER_CUE = re.compile(
    rf"\b(?P<n>{_WORD} {_WORD}) (?:wrote|here|speaking)\b")
_STRIP = " \t\n.,;:!?\"'()[]\u2019"
_APOSTROPHE = re.compile("['\u2019]")
_WEEKDAYS = frozenset({"monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                       "sunday"})


def load_nlp(model: str) -> Any:
    """The spaCy pipeline with only NER running; installed model packages load by module.

    The lemmatizer is loaded but disabled: only its WordNet word index is used (see
    ``common_words``).
    """
    # Deferred: spaCy is a heavy import, needed only when NER is on.
    import spacy

    try:
        module = importlib.import_module(model)
        return module.load(exclude=_EXCLUDE, disable=["lemmatizer"])
    except ImportError:
        return spacy.load(model, exclude=_EXCLUDE, disable=["lemmatizer"])


def common_words(nlp: Any) -> frozenset[str]:
    """English dictionary words (WordNet index shipped in the model's lemmatizer tables).

    A lone capitalised dictionary word tagged PERSON ("my Card", "Withdrawal") is far more
    often a mis-capitalised noun than a name in tickets; empty if the model has no table.
    """
    if nlp is None or "lemmatizer" not in nlp.component_names:
        return frozenset()
    lookups = nlp.get_pipe("lemmatizer").lookups
    if not lookups.has_table("lemma_index"):
        return frozenset()
    index = lookups.get_table("lemma_index")
    return frozenset(w for pos in ("noun", "verb", "adj", "adv") for w in index.get(pos, ()))


def lexicon(nlp: Any, dictionary: frozenset[str]) -> Lexicon:
    """The dictionary plus its ordinary words: verbs, adjectives, adverbs and stop words, the
    words a name like "Grace" or "Will" can also be (``context_names``)."""
    common: set[str] = set(getattr(getattr(nlp, "Defaults", None), "stop_words", ()) or ())
    rules: set[tuple[str, str]] = set()
    irregular: set[str] = set()
    if nlp is not None and "lemmatizer" in nlp.component_names:
        lookups = nlp.get_pipe("lemmatizer").lookups
        if lookups.has_table("lemma_index"):
            index = lookups.get_table("lemma_index")
            common.update(w for pos in ("verb", "adj", "adv") for w in index.get(pos, ()))
        if lookups.has_table("lemma_rules"):
            table = lookups.get_table("lemma_rules")
            rules.update((old, new) for pos in ("verb", "noun", "adj") for old, new in
                         table.get(pos, ()) if old)
        if lookups.has_table("lemma_exc"):
            table = lookups.get_table("lemma_exc")
            irregular.update(w for pos in ("verb", "adj", "adv") for w in table.get(pos, {}))
    return Lexicon(dictionary, frozenset(common), load_given_names(),
                   tuple(sorted(rules)), frozenset(irregular))


def plain_words(nlp: Any, dictionary: frozenset[str]) -> frozenset[str]:
    """Words that, capitalised at a sentence start, are not a name: the dictionary plus the
    model's stop words ("how", "what", "my")."""
    stops = frozenset(getattr(getattr(nlp, "Defaults", None), "stop_words", ()) or ())
    return dictionary | stops


def needs_ner(text: str, plain_words: frozenset[str] = frozenset()) -> bool:
    """Whether capitalisation can tell a name apart in ``text``.

    Entities without a capital letter are dropped, so lower-case texts skip NER. In Title Case
    text ("Cancel Transaction") every word looks like a name, so only cues are trusted there:
    a short text with every word capitalised, or a longer one where most words not starting a
    sentence are (acronyms and words with digits do not count). A text whose only capitals
    start sentences with ``plain_words`` ("How", "I'm", "Card") skips NER too: NER could only
    find a lone word there, and a lone dictionary word is dropped anyway (``ner_names``).
    Weekdays are never names. This spares NER on most Banking77 queries
    (benchmarks/RESULTS.md).
    """
    words: list[str] = []
    initial: list[bool] = []
    prev = ""
    for w in text.split():
        if w[:1].isalpha() and not w.isupper() and not any(c.isdigit() for c in w):
            words.append(w)
            initial.append(not prev or prev[-1] in ".!?\n")
        prev = w
    caps = [w[0].isupper() for w in words]
    if not any(caps):
        return False
    if len(words) <= 4:
        return not all(caps)
    inner = [c for c, first in zip(caps, initial, strict=True) if not first]
    if inner and sum(inner) / len(inner) > 0.6:
        return False
    return any(
        cap and (core not in _WEEKDAYS and (not first or core not in plain_words))
        for w, cap, first in zip(words, caps, initial, strict=True)
        for core in (_APOSTROPHE.split(w.strip(_STRIP), maxsplit=1)[0].casefold(),))


def _clean(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Trim punctuation and possessive ``'s``; reject brands, digits and lower-case words."""
    while start < end and text[start] in _STRIP:
        start += 1
    while end > start and text[end - 1] in _STRIP:
        end -= 1
    if text[start:end].endswith(("'s", "\u2019s")):
        end -= 2
    title = _LEADING_TITLE.match(text, start, end)
    if title:
        start = title.end()
    value = text[start:end]
    if (len(value) < 2 or not value[0].isupper() or any(c.isdigit() for c in value)
            or "<" in value or ">" in value or "@" in value or value.isupper()
            or value.casefold() in NOT_NAMES
            or any(w.casefold() in NOT_NAMES for w in value.split())):
        return None
    return start, end


def cue_names(text: str) -> Iterator[Span]:
    """Names after titles ("Mrs Patel"), introductions ("my name is Jo Bloggs") and before
    "here"/"wrote"/"speaking"."""
    for regex in (_TITLE_CUE, _INTRO_CUE, _AFTER_CUE):
        for m in regex.finditer(text):
            words = m.group("n").split(" ")
            # "I am Waiting" is not a name: every word must look like one (not a common word).
            while words and words[-1].casefold() in _COMMON:
                words.pop()
            if not words or words[0].casefold() in _COMMON:
                continue
            cleaned = _clean(text, m.start("n"), m.start("n") + len(" ".join(words)))
            if cleaned:
                yield Span(*cleaned, "PERSON")


def ner_names(
    text: str, ents: Iterable[Span], dictionary: frozenset[str] = frozenset(),
    confirmed: frozenset[str] | set[str] = frozenset(),
) -> Iterator[Span]:
    """NER PERSON spans, cleaned; a lone dictionary word is dropped unless a cue or an e-mail
    address in the same ticket already named someone so ("Hi Grace," ... "Grace said"), or
    NER tagged it a person at two places at least (a one-off "my Card" stays a slip)."""
    ents = list(ents)
    tagged = Counter(fold(text[e.start:e.end]) for e in ents)
    for ent in ents:
        cleaned = _clean(text, ent.start, ent.end)
        if cleaned is None:
            continue
        value = text[cleaned[0]:cleaned[1]]
        if (" " not in value and value.casefold() in dictionary and fold(value) not in confirmed
                and tagged[fold(value)] < 2):
            continue
        yield Span(*cleaned, "PERSON")


def _ticket_names(text: str, ents: list[Span], lex: Lexicon) -> list[Span]:
    """Cue names, then NER names, then every other mention of a name found either way."""
    found = [*cue_names(text), *cue_spans(text, lex), *given_name_spans(text, lex)]
    names = name_tokens(text, found) | email_names(text, lex)
    found.extend(ner_names(text, ents, lex.dictionary, names))
    names |= name_tokens(text, found)
    found.extend(propagate(text, names, lex, ents, found))
    return found


def person_spans(
    nlp: Any, texts: list[str], batch_size: int = 256, dictionary: frozenset[str] = frozenset(),
    plain: frozenset[str] = frozenset(), lex: Lexicon | None = None,
) -> list[list[Span]]:
    """Person spans for each text; NER runs batched (``nlp.pipe``) on texts that need it."""
    lex = lex or Lexicon(dictionary, plain)
    ents: list[list[Span]] = [[] for _ in texts]
    if nlp is not None:
        todo = [i for i, t in enumerate(texts) if needs_ner(t, plain)]
        docs: Iterable[Any] = nlp.pipe((texts[i] for i in todo), batch_size=batch_size)
        for i, doc in zip(todo, docs, strict=True):
            ents[i] = [Span(e.start_char, e.end_char, "PERSON")
                       for e in doc.ents if e.label_ == "PERSON"]
    return [_ticket_names(t, e, lex) for t, e in zip(texts, ents, strict=True)]


_COMMON = frozenset({
    "a", "abroad", "account", "afraid", "also", "am", "an", "and", "are", "at", "back", "bank",
    "calling", "card", "concerned", "confused", "currently", "customer", "desk", "for", "from",
    "frustrated", "glad", "going", "happy", "having", "hello", "help", "here", "hi", "i", "in",
    "interested", "is", "just", "looking", "my", "new", "not", "on", "our", "please", "really",
    "service", "so", "sorry", "still", "support", "sure", "team", "thank", "thanks", "the",
    "there", "to", "travelling", "trying", "unable", "very", "waiting", "was", "with", "worried",
    "writing", "you", "your",
})

"""Word lists for telling names from words: tokens, stop words, the model's dictionary, its
ordinary words (verbs, adjectives, adverbs: "grace", "mark", "will") and a given-name gazetteer.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from cca.package_data import data_path

TOKEN = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")
PARTICLES = frozenset({"van", "von", "der", "den", "de", "da", "di", "du", "le", "la", "del",
                        "bin", "al", "el", "ó", "mac", "ter"})
TITLES = frozenset({"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "dame"})
#: Capitalised words that follow a cue but are not names (Hi *Team*, Regards, *Sent* from...).
STOP = frozenset({
    "team",
    "all", "there", "everyone", "guys", "folks", "sir", "madam", "support", "customer",
    "customers", "service", "services", "sent", "get", "from", "the", "a", "an", "and", "or",
    "for", "to", "it", "its", "this", "that", "you", "your", "we", "our", "us", "me", "my", "i",
    "im", "i'm", "agent", "caller", "advisor", "adviser", "rep", "client", "member", "bot",
    "assistant", "system", "admin", "again", "january", "february", "march", "april",
    "may", "june", "july", "august", "september", "october", "november", "december", "jan", "feb",
    "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "monday", "tuesday",
    "wednesday", "thursday", "friday", "saturday", "sunday", "today", "tomorrow", "yesterday",
    "please", "thanks", "thank", "regards", "cheers", "best", "kind", "message", "subject", "date",
    "details", "note", "notes", "name", "email", "phone", "account", "sort", "card", "iban", "dob",
    "cc", "re", "fwd", "fw", "fyi", "ok", "hi", "hello", "hey", "dear", "ive", "id", "youre",
    "dont", "cant", "wont", "didnt", "doesnt", "isnt", "wasnt", "havent", "hasnt", "arent",
    "thats", "theres", "whats", "lets", "theyre", "ur", "u", "pls", "plz", "thx",
})

def fold(word: str) -> str:
    """Case- and accent-blind form used to compare mentions: "García" == "garcia"."""
    nfkd = unicodedata.normalize("NFKD", word.casefold())
    return "".join(c for c in nfkd if c.isalnum())


_CONTRACTION = re.compile(r"^(.+?)['\u2019](?:s|t|re|ve|ll|d|m)$")


@dataclass(frozen=True)
class Lexicon:
    """Word lists from the spaCy model: ``dictionary`` (WordNet, names like "david" included)
    and ``common`` (verbs, adjectives, adverbs, stop words: "grace", "mark", "hope").

    WordNet lists base forms only, so inflected words ("seeing", "locked", "says") are looked
    up through the model's lemma suffix rules and irregular forms (``rules``, ``irregular``),
    and contractions ("There's", "hasn't") by their first part.
    """

    dictionary: frozenset[str] = frozenset()
    common: frozenset[str] = frozenset()
    given: frozenset[str] = frozenset()
    rules: tuple[tuple[str, str], ...] = ()
    irregular: frozenset[str] = frozenset()
    #: Answers so far; bounded by the vocabulary actually seen, cleared past 200,000.
    _memo: dict[tuple[str, str], bool] = field(default_factory=dict, compare=False, repr=False)

    def _bases(self, word: str) -> list[str]:
        w = word.casefold()
        if w.endswith(("n't", "n\u2019t")):
            return ["not"]
        m = _CONTRACTION.match(w)
        if m:
            w = m.group(1)
        out = [w]
        out.extend(w[: -len(old)] + new for old, new in self.rules
                   if w.endswith(old) and len(w) > len(old) + 1)
        return out

    def ordinary(self, word: str) -> bool:
        """A verb, adjective, adverb or stop word, in any inflection."""
        w = word.casefold()
        key = ("o", w)
        if len(self._memo) > 200_000:
            self._memo.clear()
        if key not in self._memo:
            # A word WordNet lists as it is ("james", a noun) is not re-read as an
            # inflection ("jam" + "es").
            self._memo[key] = (w in STOP or w in self.common or w in self.irregular
                               or (w not in self.dictionary and any(
                                   b in self.common or b in STOP for b in self._bases(w))))
        return self._memo[key]

    def plain(self, word: str) -> bool:
        """Any dictionary word, in any inflection."""
        w = word.casefold()
        key = ("p", w)
        if key not in self._memo:
            self._memo[key] = self.ordinary(w) or any(b in self.dictionary for b in self._bases(w))
        return self._memo[key]


def load_given_names() -> frozenset[str]:
    """The given-name gazetteer shipped in redaction/data (built from Faker's lists)."""
    path = data_path("redaction", "data", "given_names.txt")
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(w for w in lines if w and not w.startswith("#"))

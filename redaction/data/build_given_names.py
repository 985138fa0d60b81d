"""Build given_names.txt, the given-name gazetteer, from Faker's person providers (MIT).

Faker keeps first-name lists for some 80 locales; the Latin-script ones are folded (case and
accents dropped) and written one a line, so the redactor needs neither Faker at run time nor
a network. Re-run after a Faker upgrade:

    uv run --with faker python redaction/data/build_given_names.py
"""

from __future__ import annotations

import importlib
import pkgutil
import unicodedata
from pathlib import Path

OUT = Path(__file__).with_name("given_names.txt")
ATTRS = ("first_names", "first_names_male", "first_names_female", "first_names_nonbinary")
HEADER = """\
# Given names, folded (lower case, no accents), one a line; built by build_given_names.py
# from Faker's person providers (https://github.com/joke2k/faker).
# Faker: Copyright (c) 2012 Daniele Faraglia. MIT License: permission is hereby granted, free
# of charge, to any person obtaining a copy of this software and associated documentation
# files, to deal in the Software without restriction, provided the copyright notice and this
# permission notice are included in all copies or substantial portions of the Software.
"""


def fold(word: str) -> str:
    nfkd = unicodedata.normalize("NFKD", word.casefold())
    return "".join(c for c in nfkd if c.isalnum())


def names() -> set[str]:
    import faker.providers.person as person  # deferred: a build-time tool only

    out: set[str] = set()
    for info in pkgutil.iter_modules(person.__path__):
        provider = importlib.import_module(f"{person.__name__}.{info.name}").Provider
        for attr in ATTRS:
            values = getattr(provider, attr, ())
            if not isinstance(values, (dict, list, tuple, set, frozenset)):
                continue
            for name in values.keys() if isinstance(values, dict) else values:
                for part in str(name).replace("-", " ").split():
                    f = fold(part)
                    if len(f) >= 3 and f.isascii() and f.isalpha():
                        out.add(f)
    return out


def main() -> None:
    found = sorted(names())
    OUT.write_text(HEADER + "\n".join(found) + "\n", encoding="utf-8")
    print(f"wrote {len(found)} names to {OUT}")


if __name__ == "__main__":
    main()

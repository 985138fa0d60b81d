"""Canary PII for the leak scans: distinctive values that appear nowhere else, and a search
that still finds them after a simple reformatting.

Tickets carrying these values go through the product (tests/integration/test_canary_pii.py,
tests/dags/test_pii_canary.py); every output is then searched for them. A value is looked
for case-insensitively, URL-decoded, HTML-unescaped, and for the card and phone also as
digits only (separators dropped), with its distinctive fragments (the e-mail's local part,
the surname, the street name), so a log line that reformats a value is still caught.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_plus

PERSON = "Zebulon Quarterfield"
EMAIL = "zeb.quarterfield.k7@example.org"
PHONE = "+44 7700 900461"
CARD = "4539 1488 0343 6467"  # Luhn-valid
IBAN = "GB32 QRTF 6016 1331 9268 19"  # mod-97-valid
ADDRESS = "1427 Thistlewood Crescent"
CUSTOMER = "CUST-QZX-771903"

# kind -> the lower-case strings whose presence means the value leaked
NEEDLES: dict[str, tuple[str, ...]] = {
    "person": ("zebulon", "quarterfield"),
    "email": ("zeb.quarterfield.k7", "quarterfield.k7@"),
    "phone": ("7700 900461", "7700-900461", "7700900461"),
    "card": ("4539 1488 0343 6467", "4539-1488-0343-6467", "4539148803436467"),
    "iban": ("gb32qrtf", "gb32 qrtf", "qrtf60161331926819", "qrtf 6016 1331"),
    "address": ("thistlewood",),
    "customer": ("cust-qzx-771903", "qzx-771903"),
}
# kind -> digits that must not appear in a text's digits-only projection
DIGITS: dict[str, str] = {"phone": "7700900461", "card": "4539148803436467"}


def canary_texts() -> list[tuple[str, str, str]]:
    """(subject, body, label) of tickets carrying every canary, in intents the fixture
    model knows, each written the way customers write them."""
    return [
        ("Invoice question", f"Hi, my name is {PERSON} and my card {CARD} was charged twice "
         "on my invoice this month.", "billing_question"),
        ("Call me", f"Please call me back on {PHONE}, there is an extra fee on my invoice "
         "I do not understand.", "billing_question"),
        ("Password", f"My email is {EMAIL}, I forgot my password and cannot log in.",
         "password_reset"),
        ("Refund", f"Please send the refund to IBAN {IBAN}, I was charged twice on my bill.",
         "billing_question"),
        ("Parcel", f"My parcel to {ADDRESS} has not arrived yet, the tracking has not moved.",
         "delivery_delay"),
        (f"From {PERSON}", f"I want to cancel my subscription. Write to {EMAIL} or call "
         f"{PHONE}; post goes to {ADDRESS}.", "cancel_subscription"),
    ]


@dataclass(frozen=True)
class Hit:
    where: str
    kind: str
    needle: str
    context: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind} ({self.needle!r}) in ...{self.context}..."


def _views(text: str) -> Iterator[str]:
    low = text.lower()
    yield low
    decoded = unquote_plus(low)
    if decoded != low:
        yield decoded
    unescaped = html.unescape(low)
    if unescaped != low:
        yield unescaped
    if "\\u" in low:  # JSON that escaped non-ASCII or '@'
        yield re.sub(r"\\u([0-9a-f]{4})", lambda m: chr(int(m.group(1), 16)), low)


def find(where: str, text: str, *, digits: bool = True) -> list[Hit]:
    """Every canary in ``text``; ``digits``: also in its digits-only projection (text files
    only: in a binary file a random digit run would be noise)."""
    hits: list[Hit] = []
    for view in _views(text):
        for kind, needles in NEEDLES.items():
            for needle in needles:
                at = view.find(needle)
                if at >= 0:
                    hits.append(Hit(where, kind, needle, view[max(0, at - 60): at + 80]))
                    break
    if digits:
        only = re.sub(r"\D+", "", text)
        for kind, needle in DIGITS.items():
            at = only.find(needle)
            if at >= 0:
                hits.append(Hit(where, kind, f"digits {needle}", only[max(0, at - 20): at + 36]))
    return _unique(hits)


def _unique(hits: list[Hit]) -> list[Hit]:
    seen: set[tuple[str, str]] = set()
    out = []
    for h in hits:
        if (h.where, h.kind) not in seen:
            seen.add((h.where, h.kind))
            out.append(h)
    return out


def find_in_file(path: Path, where: str | None = None) -> list[Hit]:
    data = _inflated(path.read_bytes())
    binary = b"\x00" in data[:8192]
    return find(where or str(path), data.decode("utf-8", "replace"), digits=not binary)


def _inflated(data: bytes) -> bytes:
    """A zlib stream (joblib's compressed pickles: the model's vocabulary) inflated, so
    the text inside is searched too; anything else as it is."""
    if data[:1] == b"\x78" and data[1:2] in (b"\x01", b"\x5e", b"\x9c", b"\xda"):
        with contextlib.suppress(zlib.error):
            return zlib.decompress(data)
    return data


def walk(root: Path, skip: Iterable[Path] = ()) -> list[Path]:
    """Every file under ``root`` except those under a ``skip`` path (symlinks not followed)."""
    skipped = [p.resolve() for p in skip]
    out = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        resolved = path.resolve()
        if any(resolved == s or s in resolved.parents for s in skipped):
            continue
        out.append(path)
    return out


def scan_files(paths: Iterable[Path]) -> list[Hit]:
    return [h for p in paths for h in find_in_file(p)]


def scan_mlflow(tracking_uri: str, download_to: Path) -> tuple[list[Hit], int]:
    """Every run of every experiment, through the client API: param names and values, tags,
    metric names, dataset inputs and every artifact file; and the registered models'
    versions (tags, descriptions). Returns the hits and how many runs were read."""
    # deferred: mlflow is heavy and only the scans use it
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    hits: list[Hit] = []
    runs = [r for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id], max_results=1000)]
    for run in runs:
        where = f"mlflow run {run.info.run_id}"
        data = run.data
        hits += find(f"{where} params", json.dumps(data.params))
        hits += find(f"{where} tags", json.dumps(data.tags))
        hits += find(f"{where} metric names", json.dumps(sorted(data.metrics)))
        inputs = run.inputs.dataset_inputs if run.inputs else []
        hits += find(f"{where} datasets", json.dumps(
            [[d.dataset.name, d.dataset.source, d.dataset.schema, d.dataset.profile]
             for d in inputs], default=str))
        target = download_to / run.info.run_id
        for art in _artifacts(client, run.info.run_id):
            local = Path(client.download_artifacts(run.info.run_id, art, str(target)))
            for f in ([local] if local.is_file() else walk(local)):
                hits += find_in_file(f, f"{where} artifact {art}")
    for model in client.search_registered_models():
        hits += find(f"mlflow model {model.name}", json.dumps([model.description, model.tags]))
        for v in client.search_model_versions(f"name = '{model.name}'"):
            hits += find(f"mlflow model {model.name} v{v.version}",
                         json.dumps([v.description, v.tags, v.source]))
    return hits, len(runs)


def _artifacts(client: object, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for info in client.list_artifacts(run_id, path):  # type: ignore[attr-defined]
        out += _artifacts(client, run_id, info.path) if info.is_dir else [info.path]
    return out


def report(hits: list[Hit], limit: int = 40) -> str:
    return f"{len(hits)} canary hit(s):\n" + "\n".join(str(h) for h in hits[:limit])

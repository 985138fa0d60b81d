"""The holdout, chosen by a stable hash of the ticket id.

A ticket is in the holdout if and only if ``sha256(id)`` falls in the first
``fraction`` of the hash space, so the same ticket is held out in every training run: no
champion or candidate ever fits on a holdout ticket, and comparing two models "on the same
holdout" is fair even when they were trained weeks apart on different windows.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sklearn.metrics import f1_score

_SPACE = 2**64


def in_holdout(ticket_id: str, fraction: float) -> bool:
    """Whether this ticket belongs to the holdout; depends on nothing but its id."""
    bucket = int.from_bytes(hashlib.sha256(ticket_id.encode("utf-8")).digest()[:8], "big")
    return bucket < fraction * _SPACE


@dataclass
class Split:
    fit: list[int]
    holdout: list[int]
    # Classes with no row in the fit part by hash: all their rows stay in fit (a model cannot
    # learn a class it never sees), at the price of those ids not being held out this time.
    kept_in_fit: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = f"fitting on {len(self.fit)}, holding out {len(self.holdout)} (by id hash)"
        if self.kept_in_fit:
            text += (f"; {len(self.kept_in_fit)} class(es) too small to hold out, kept in fit: "
                     f"{', '.join(self.kept_in_fit[:10])}")
        return text


def split_by_id(ids: list[str], labels: list[str], fraction: float,
                texts: list[str] | None = None) -> Split:
    """Positions of the fit and holdout rows; every class appears in the fit part.

    With ``texts``, tickets whose text is the same (whitespace collapsed) go together, keyed
    by that text instead of their ids: the same text on both sides would leak the answer (two
    people can file the same words with different labels). A shared text's key is the text
    itself, so such a group stays together however the training window moves.
    """
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    key = list(ids)
    if texts is not None:
        norm = [" ".join(text.split()) for text in texts]
        shared = {t for t, n in Counter(norm).items() if n > 1}
        key = [f"text:{n}" if n in shared else tid for tid, n in zip(ids, norm, strict=True)]
    held = {i for i, k in enumerate(key) if in_holdout(k, fraction)}
    kept = sorted(label for label, rows in by_class.items() if all(i in held for i in rows))
    for label in kept:
        held.difference_update(by_class[label])
    fit = [i for i in range(len(ids)) if i not in held]
    return Split(fit=fit, holdout=sorted(held), kept_in_fit=kept)


def holdout_f1(y_true: list[str], y_pred: list[str]) -> tuple[float, dict[str, float]]:
    """Macro-F1 and per-class F1 over the classes the holdout contains.

    One definition for the candidate, the champion and the training report, so the gate
    compares like with like; a class absent from the holdout has no F1 to compare.
    """
    classes = sorted(set(y_true))
    per_class = f1_score(y_true, y_pred, labels=classes, average=None, zero_division=0)
    scores = {c: round(float(f), 6) for c, f in zip(classes, per_class, strict=True)}
    return (round(float(per_class.mean()), 6) if classes else 0.0), scores

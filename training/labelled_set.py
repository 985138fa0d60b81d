"""What a training run reads: the window's validated tickets with their vectors, and what the
vector cache would have answered for each of them.

Vectors the store already holds for unchanged text are reused, so a retrain embeds only what
is new. The cache's track record is estimated leave-one-out on the index (each ticket's
nearest *other* labelled tickets), the way the serving cache would have seen it; the seeds
are saved with the bundle and reach the serving cache only when the bundle starts serving.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from cascade.vector_cache import CachePolicy, decide, propose
from cca.embeddings import Embedder
from cca.errors import StateError
from cca.guarantees import precision_lower_bound
from cca.settings import Settings
from cca.store import Database
from cca.store.tickets_repo import labelled_tickets
from cca.store.vectors import nearest, stored_vectors
from cca.tickets import Neighbour, Ticket

TrainProgress = Callable[[str], None]
_LOO_BATCH = 512  # tickets per nearest-neighbour query


@dataclass(frozen=True)
class Rows:
    """Some rows of a labelled set (e.g. its fit or its holdout part), in the given order."""

    texts: list[str]
    vectors: np.ndarray
    deep: np.ndarray | None
    labels: list[str]


@dataclass(frozen=True)
class LabelledSet:
    """The training window, oldest first: tickets (redacted text), labels and vectors."""

    tickets: list[Ticket]
    ids: list[str]
    texts: list[str]
    labels: list[str]
    hashes: list[str]  # content hashes: a stored vector is reused only for unchanged text
    vectors: np.ndarray  # the fast tier's (and the cache's) embedding
    deep: np.ndarray | None  # the deep tier's embedding, if one is configured
    n_classes: int

    def rows(self, idx: np.ndarray) -> Rows:
        return Rows(texts=take(self.texts, idx), vectors=self.vectors[idx],
                    deep=None if self.deep is None else self.deep[idx],
                    labels=take(self.labels, idx))

    def frame(self, idx: np.ndarray) -> pd.DataFrame:
        """Columns id, text, label: what the data validation suite checks."""
        return pd.DataFrame({"id": take(self.ids, idx), "text": take(self.texts, idx),
                             "label": take(self.labels, idx)})

    def data_hash(self) -> str:
        """Identifies the training data (ids, texts, labels), whatever their order."""
        h = hashlib.sha256()
        for tid, text, label in sorted(zip(self.ids, self.texts, self.labels, strict=True)):
            h.update(f"{tid}\x1f{text}\x1f{label}\x1e".encode())
        return h.hexdigest()


def take(seq: Sequence[str], idx: np.ndarray) -> list[str]:
    return [seq[i] for i in idx]


def load_labelled_set(db: Database, embedders: tuple[Embedder, Embedder | None],
                      since: datetime | None, say: TrainProgress) -> LabelledSet:
    """Validated labels given since ``since`` (all if None); at least two classes."""
    with db.begin() as conn:
        rows = labelled_tickets(conn, since=since)
    counts = Counter(label for _, label in rows)
    if len(counts) < 2:
        raise StateError("training needs validated labels of at least 2 classes: "
                         "run `cca import FILE --label-col COL` first")
    tickets = [t for t, _ in rows]
    ids = [t.id for t in tickets]
    texts = [t.text for t in tickets]
    hashes = [t.content_hash() for t in tickets]
    say(f"{len(rows)} labelled tickets, {len(counts)} labels")
    embedder, deep_embedder = embedders
    vectors = embeddings_for(db, embedder, ids, texts, hashes)
    deep = embeddings_for(db, deep_embedder, ids, texts, hashes) if deep_embedder else None
    return LabelledSet(tickets=tickets, ids=ids, texts=texts,
                       labels=[label for _, label in rows], hashes=hashes, vectors=vectors,
                       deep=deep, n_classes=len(counts))


def embeddings_for(db: Database, embedder: Embedder, ids: list[str], texts: list[str],
                   hashes: list[str]) -> np.ndarray:
    """Reuse vectors the store already holds for unchanged text; embed the rest."""
    with db.begin() as conn:
        stored = stored_vectors(conn, embedder.model_id)
    rows: list[np.ndarray | None] = []
    missing = []
    for i, (tid, digest) in enumerate(zip(ids, hashes, strict=True)):
        hit = stored.get(tid)
        rows.append(hit[1] if hit and hit[0] == digest else None)
        if rows[-1] is None:
            missing.append(i)
    if missing:
        for i, vector in zip(missing, embedder.embed([texts[i] for i in missing]), strict=True):
            rows[i] = vector
    return np.vstack(rows).astype(np.float32)


@dataclass(frozen=True)
class CacheTrackRecord:
    """What the cache would have answered for each ticket of a labelled set, and how often
    its proposal of each label would have been right (the seeds the serving cache gets).

    Each ticket's proposal comes from its nearest *other* tickets (leave-one-out), and whether
    the label's record lets it through is judged on the seeds of the *other* folds only, so
    ``answers`` are out-of-fold in both halves of the rule: the hits and wrong hits counted
    from them (``metrics``) are what the serving cache would do on tickets it never saw, not
    a record judged on the ticket it is about.
    """

    neighbours: list[list[Neighbour]]  # per ticket: its nearest other labelled tickets
    labels: list[str]  # per ticket: its validated label
    seeds: dict[str, tuple[int, int]]  # label -> (proposed, right), over every ticket
    policy: CachePolicy
    answers: list[str | None]  # per ticket: the out-of-fold answer, None: passed on

    def answer(self, row: int) -> str | None:
        """The cache's answer for this row of the set, None to pass it on."""
        return self.answers[row]

    def metrics(self) -> dict[str, float]:
        """GPTCache-style figures of the out-of-fold answers: hits, wrong hits, their rates
        and the one-sided upper confidence bound of the wrong-hit rate."""
        hits = sum(a is not None for a in self.answers)
        wrong = sum(a is not None and a != t
                    for a, t in zip(self.answers, self.labels, strict=True))
        n = len(self.answers)
        bound = (1.0 - precision_lower_bound(hits - wrong, hits, self.policy.confidence)
                 if hits else 1.0)
        return {"cache_hits": float(hits), "cache_wrong_hits": float(wrong),
                "cache_hit_rate": hits / n if n else 0.0,
                "cache_wrong_hit_rate": wrong / hits if hits else 0.0,
                "cache_wrong_hit_bound": bound}


def cache_track_record(settings: Settings, db: Database, model_id: str,
                       data: LabelledSet) -> CacheTrackRecord:
    neighbours = leave_one_out_neighbours(db, model_id, data.ids, data.vectors,
                                          settings.cache_top_k)
    policy = CachePolicy.from_settings(settings)
    return CacheTrackRecord(
        neighbours=neighbours, labels=list(data.labels),
        seeds=track_record_seeds(neighbours, data.labels, policy), policy=policy,
        answers=out_of_fold_answers(neighbours, data.labels,
                                    cache_folds(data.ids, settings.operating_folds), policy))


def cache_folds(ids: Sequence[str], folds: int = 5) -> list[int]:
    """A fold per ticket from a hash of its id: stable across runs and row orders."""
    return [int.from_bytes(hashlib.sha256(f"cache-fold:{tid}".encode()).digest()[:8], "big")
            % folds for tid in ids]


def out_of_fold_answers(neighbours: list[list[Neighbour]], labels: list[str],
                        folds: list[int], policy: CachePolicy) -> list[str | None]:
    """Each ticket's answer with the gate judged on the seeds of the other folds."""
    total = track_record_seeds(neighbours, labels, policy)
    others: dict[int, dict[str, tuple[int, int]]] = {}
    for fold in set(folds):
        rows = [i for i, f in enumerate(folds) if f == fold]
        mine = track_record_seeds([neighbours[i] for i in rows], [labels[i] for i in rows],
                                  policy)
        others[fold] = {label: (r - mine.get(label, (0, 0))[0], c - mine.get(label, (0, 0))[1])
                        for label, (r, c) in total.items()}
    answers: list[str | None] = []
    for found, fold in zip(neighbours, folds, strict=True):
        hit = decide(found, others[fold], policy)
        answers.append(hit.label if hit else None)
    return answers


def leave_one_out_neighbours(
    db: Database, model_id: str, ids: list[str], vectors: np.ndarray, k: int
) -> list[list[Neighbour]]:
    """Each labelled ticket's nearest *other* labelled tickets, as the cache would see them."""
    out: list[list[Neighbour]] = []
    with db.begin() as conn:
        for start in range(0, len(ids), _LOO_BATCH):
            end = start + _LOO_BATCH
            out += nearest(conn, model_id, vectors[start:end], k=k, exclude_ids=ids[start:end])
    return out


def track_record_seeds(
    neighbours: list[list[Neighbour]], labels: list[str], policy: CachePolicy
) -> dict[str, tuple[int, int]]:
    """Per label: how often the cache's proposal of that label would have been right."""
    seeds: dict[str, list[int]] = {}
    for truth, found in zip(labels, neighbours, strict=True):
        proposal = propose(found, policy)
        if proposal is not None:
            counts = seeds.setdefault(proposal.label, [0, 0])
            counts[0] += 1
            counts[1] += int(proposal.label == truth)
    return {label: (r, c) for label, (r, c) in seeds.items()}

"""The vector cache stage: reuse the label of similar, already-validated tickets.

A neighbour proposes a label when it is similar enough, or when the top-k neighbours agree.
Similarity alone is not safe (near-identical wording can carry another intent), so the
proposal is only taken when that label's track record earns it: the share of earlier reuses
of it that validated labels confirmed. The record is seeded at training time by a
leave-one-out pass over the index (the same proposal rule, so the estimate is per class) and
then moved by feedback on the cache's own answers.

The rule is a bound, not an estimate: a label is reused only when the one-sided lower
confidence bound (exact binomial, Clopper-Pearson) of its reuse precision reaches the class's
minimum precision. A point estimate such as 29 right of 30 looks as good as 970 of 1,000, but
only the second is evidence; with the bound a label with little evidence is simply not reused
until it earns it, and how much evidence that takes follows from the target, not from a prior.
The cascade-wide precision target is then the cascade's own operating point, which counts the
cache's answers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from cca.guarantees import precision_lower_bound
from cca.settings import Settings
from cca.tickets import Neighbour

CONFIDENCE = 0.95  # the default of CCA_GUARANTEE_CONFIDENCE


@dataclass(frozen=True)
class CachePolicy:
    min_similarity: float = 0.92
    # The lower bound of a label's reuse precision must be at least this.
    min_precision: float = 0.90
    confidence: float = CONFIDENCE
    topk_agree: int = 3
    topk_min_confidence: float = 0.85
    prior_strength: float = 2.0  # only for the track record shown and the answer's confidence

    @classmethod
    def from_settings(cls, settings: Settings) -> CachePolicy:
        return cls(
            min_similarity=settings.cache_min_similarity,
            min_precision=settings.class_min_precision,
            confidence=settings.guarantee_confidence,
            topk_agree=settings.cache_topk_agree,
            topk_min_confidence=settings.cache_topk_min_confidence,
            prior_strength=settings.cache_track_record_prior,
        )


@dataclass(frozen=True)
class CacheAnswer:
    label: str
    confidence: float
    reason: str


def track_record(reuses: int, confirmed: int, prior_strength: float) -> float:
    """Posterior mean of the reuse precision under a Beta(prior/2, prior/2) prior."""
    return (confirmed + prior_strength / 2) / (reuses + prior_strength)


@lru_cache(maxsize=4096)
def reuse_bound(reuses: int, confirmed: int, confidence: float = CONFIDENCE) -> float:
    """Lower confidence bound of a label's reuse precision (cached: the cache asks it for
    every ticket, and a label's counts change only with feedback or a new champion)."""
    return precision_lower_bound(confirmed, reuses, confidence)


def propose(neighbours: list[Neighbour], policy: CachePolicy) -> CacheAnswer | None:
    """The label the neighbours suggest on similarity alone, before any track record."""
    if not neighbours:
        return None
    top = neighbours[0]
    if top.similarity >= policy.min_similarity:
        return CacheAnswer(top.label, top.similarity,
                           f"nearest ticket {top.ticket_id} at similarity {top.similarity:.3f}")
    k = policy.topk_agree
    if k > 0 and len(neighbours) >= k:
        head = neighbours[:k]
        label, votes = Counter(n.label for n in head).most_common(1)[0]
        mean_sim = sum(n.similarity for n in head) / k
        if votes == k and mean_sim >= policy.topk_min_confidence:
            return CacheAnswer(label, mean_sim,
                               f"top-{k} neighbours agree, mean similarity {mean_sim:.3f}")
    return None


def decide(
    neighbours: list[Neighbour],
    records: dict[str, tuple[int, int]],
    policy: CachePolicy,
) -> CacheAnswer | None:
    """Answer from the neighbours, or None to pass the ticket on to the classifier."""
    proposal = propose(neighbours, policy)
    if proposal is None:
        return None
    reuses, confirmed = records.get(proposal.label, (0, 0))
    bound = reuse_bound(reuses, confirmed, policy.confidence)
    if bound < policy.min_precision:
        return None
    record = track_record(reuses, confirmed, policy.prior_strength)
    return CacheAnswer(
        label=proposal.label,
        confidence=record,
        reason=(f"{proposal.reason}; label track record {record:.3f} "
                f"({policy.confidence * 100:.0f} % lower bound {bound:.3f}) over {reuses} reuses"),
    )

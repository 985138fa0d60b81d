"""The vector cache stage: reuse the label of similar, already-validated tickets.

A single similarity threshold is not safe on its own (near-identical wording can carry a
different intent), so a reuse also needs the label's track record: the share of earlier
reuses of that label that validated labels confirmed. Labels with little evidence start at
an uninformative prior and are not reused until they earn it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from cca.settings import Settings
from cca.tickets import Neighbour


@dataclass(frozen=True)
class CachePolicy:
    min_similarity: float = 0.92
    min_track_record: float = 0.85
    topk_agree: int = 3
    topk_min_confidence: float = 0.85
    prior_strength: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> CachePolicy:
        return cls(
            min_similarity=settings.cache_min_similarity,
            min_track_record=settings.cache_min_track_record,
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


def decide(
    neighbours: list[Neighbour],
    records: dict[str, tuple[int, int]],
    policy: CachePolicy,
) -> CacheAnswer | None:
    """Answer from the neighbours, or None to pass the ticket on to the classifier."""
    if not neighbours:
        return None
    top = neighbours[0]
    reuses, confirmed = records.get(top.label, (0, 0))
    record = track_record(reuses, confirmed, policy.prior_strength)
    if top.similarity >= policy.min_similarity and record >= policy.min_track_record:
        return CacheAnswer(
            label=top.label,
            confidence=record,
            reason=f"nearest ticket {top.ticket_id} at similarity {top.similarity:.3f}; "
            f"label track record {record:.2f} over {reuses} reuses",
        )
    k = policy.topk_agree
    if k > 0 and len(neighbours) >= k:
        head = neighbours[:k]
        label, votes = Counter(n.label for n in head).most_common(1)[0]
        confidence = min(n.similarity for n in head)
        if votes == k and confidence >= policy.topk_min_confidence and record >= 0.5:
            return CacheAnswer(
                label=label,
                confidence=confidence,
                reason=f"top-{k} neighbours agree, lowest similarity {confidence:.3f}",
            )
    return None

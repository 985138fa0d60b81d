"""What each retraining step hands to the next: typed, and flat JSON dicts at the edges.

``train_candidate`` → ``Candidate`` → ``evaluate_candidate`` → ``Evaluation`` →
``register_candidate`` → ``Registration`` → ``promote_if_better`` → ``Promotion``. Each
result carries the one before it, so the last one says everything about the attempt.

Airflow passes a task's result to the next task as an XCom, which must be JSON: ``to_dict``
gives the flat dict the DAG passes on (and ``cca train`` / ``cca run`` report), with the
same keys as every earlier step's dict plus its own; ``from_dict`` reads one back. Scores
stay plain dicts (``Scores``) because the promotion gate and its tests read them as such.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, TypedDict


def _own_fields(cls: type, data: dict[str, Any], skip: str = "") -> dict[str, Any]:
    """The dataclass's own fields read from a flat dict (``skip``: a nested result).

    A field with a default may be absent: an XCom written before the field existed (a DAG
    run that straddles an upgrade) still reads back."""
    return {f.name: data[f.name] for f in fields(cls)
            if f.name != skip and (f.name in data or not _has_default(f))}


def _has_default(f: Any) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


class Scores(TypedDict):
    macro_f1: float
    per_class_f1: dict[str, float]


@dataclass(frozen=True)
class LoggedRun:
    """The MLflow run a candidate was logged in, and what logging it cost."""

    run_id: str
    model_uri: str
    model_id: str | None
    mlflow_seconds: float
    pyfunc_log_seconds: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoggedRun:
        return cls(**_own_fields(cls, data))


@dataclass(frozen=True)
class Candidate:
    """A trained bundle (saved, not serving) and its MLflow run."""

    bundle_version: str
    since: str  # ISO timestamp: the start of the training window
    metrics: dict[str, float]  # the bundle's holdout metrics, by name
    n_fit: int
    n_holdout: int
    labels: int
    kept_in_fit: list[str]
    fit_seconds: float
    # The candidate's own holdout, so evaluation scores exactly these tickets and labels.
    holdout_ids: list[str]
    holdout_labels: list[str]
    run: LoggedRun
    # The bundle's precision guarantee as the gate compares it (``gate.guarantee_summary``):
    # {} for a bundle without operating points.
    guarantee: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "run"}
        return {**own, **asdict(self.run)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        return cls(**_own_fields(cls, data, skip="run"), run=LoggedRun.from_dict(data))


@dataclass(frozen=True)
class ChampionScores:
    """The champion at evaluation time, and its scores on the candidate's holdout."""

    version: str
    bundle_version: str
    scores: Scores | None  # None: trained with other embeddings than configured, not scored
    kept_in_fit: list[str]  # classes it fitted whole: not compared by the gate
    embeddings: list[str | None]  # (fast, deep) model ids it was trained with
    configured: list[str | None]  # (fast, deep) model ids configured now
    guarantee: dict[str, Any] = field(default_factory=dict)  # as Candidate.guarantee

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChampionScores:
        return cls(**_own_fields(cls, data))


@dataclass(frozen=True)
class Evaluation:
    """The candidate and the champion scored on the candidate's holdout."""

    candidate: Candidate
    holdout_n: int  # holdout tickets still in the store, scored
    notes: list[str]
    candidate_scores: Scores
    champion: ChampionScores | None  # None: no champion yet

    def to_dict(self) -> dict[str, Any]:
        return {**self.candidate.to_dict(), "holdout_n": self.holdout_n, "notes": self.notes,
                "candidate_scores": self.candidate_scores,
                "champion": None if self.champion is None else asdict(self.champion)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        champion = data["champion"]
        return cls(candidate=Candidate.from_dict(data), holdout_n=data["holdout_n"],
                   notes=data["notes"], candidate_scores=data["candidate_scores"],
                   champion=None if champion is None else ChampionScores.from_dict(champion))


@dataclass(frozen=True)
class Registration:
    """The evaluated candidate as a version of the registered model, alias ``@challenger``."""

    evaluation: Evaluation
    model_version: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.evaluation.to_dict(), "model_version": self.model_version}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Registration:
        return cls(evaluation=Evaluation.from_dict(data), model_version=data["model_version"])


@dataclass(frozen=True)
class Promotion:
    """The gate's decision on a registered version: a refusal is a result, not an error.

    The last step's result: there is no ``from_dict``, nothing reads it back. In the flat
    dict its ``notes`` take the place of the evaluation's.
    """

    registration: Registration
    promoted: bool
    reasons: list[str]  # why it was refused; empty if promoted
    notes: list[str]
    serving: str | None = None  # what keeps serving when refused
    already_decided: bool = False  # decided (or promoted by hand) before this call

    def to_dict(self) -> dict[str, Any]:
        """The keys each path has always had: ``already_decided`` only when true, and then no
        ``serving`` (nothing was decided now)."""
        out = {**self.registration.to_dict(), "promoted": self.promoted,
               "reasons": self.reasons, "notes": self.notes}
        if self.already_decided:
            out["already_decided"] = True
        else:
            out["serving"] = self.serving
        return out

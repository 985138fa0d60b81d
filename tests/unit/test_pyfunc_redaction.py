"""The registered pyfunc: rules see raw text, embedders and the classifier only redacted text."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from redaction import Sanitizer
from training.pyfunc_cascade import Stages, predict_frame

EMAIL = "alice.smith@example.com"


class Recorder:
    """Stands in for the rules, the embedder and the classifier, remembering what it saw."""

    def __init__(self) -> None:
        self.rules_saw: list[str] = []
        self.embedded: list[str] = []
        self.classified: list[str] = []
        self.labels = ["a", "b"]

    def apply(self, ticket: Any) -> Any:
        self.rules_saw.append(ticket.text)
        return SimpleNamespace(label=None, confidence=0.0)

    def embed(self, texts: list[str]) -> np.ndarray:
        self.embedded += texts
        return np.zeros((len(texts), 4), dtype=np.float32)

    def predict_proba(self, texts: list[str], vectors: np.ndarray, deep: Any) -> tuple:
        self.classified += texts
        if deep is not None:
            deep(list(range(len(texts))))
        return np.tile([0.9, 0.1], (len(texts), 1)), np.ones(len(texts), dtype=bool)


def test_pii_is_redacted_after_rules_and_before_embedding_and_classifying():
    rec = Recorder()
    bundle = SimpleNamespace(classifier=rec, info=SimpleNamespace(
        classifier_threshold=0.5, departments={"a": "A"}))
    frame = pd.DataFrame({"subject": [f"From {EMAIL}"],
                          "body": [f"Please write to {EMAIL} about my refund"]})
    stages = Stages(bundle=bundle, rules=rec, sanitizer=Sanitizer(b"k" * 32, ner=False),
                    embedder=rec, deep_embedder=rec, rules_min_confidence=0.9)
    out = predict_frame(stages, frame)
    assert list(out["label"]) == ["a"] and list(out["department"]) == ["A"]
    assert EMAIL in rec.rules_saw[0]
    seen = rec.embedded + rec.classified
    assert len(seen) == 3 and all(EMAIL not in t and "<EMAIL>" in t for t in seen), seen

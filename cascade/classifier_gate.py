"""When the classifier may answer on its own.

Two ways, chosen once per cascade: the per-class operating points training chose on
out-of-fold evidence (a threshold per class on the trust score, each with its precision
bound; ``cca.operating_points``), or one common threshold on the calibrated probability
(``CCA_CLASSIFIER_THRESHOLD``, ``CCA_PER_CLASS_THRESHOLDS=false``, or a bundle from before
operating points). Either way each answer, or each refusal, says why in a sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cca.bundle import ModelBundle
from cca.classifier import Parts
from cca.operating_points import OperatingPoints
from cca.scope import TrustModel, features, neighbour_signals
from cca.settings import Settings
from cca.tickets import Neighbour


@dataclass(frozen=True)
class ClassifierGate:
    threshold: float  # the common threshold on the probability
    points: OperatingPoints | None  # None: the common threshold applies to every class
    trust: TrustModel | None

    @classmethod
    def of(cls, bundle: ModelBundle, settings: Settings) -> ClassifierGate:
        info = bundle.info
        common = settings.classifier_threshold
        trust = bundle.classifier.trust
        points = None
        if common is None and settings.per_class_thresholds and isinstance(trust, TrustModel):
            points = OperatingPoints.from_dict(info.operating_points)
        return cls(threshold=common if common is not None else info.classifier_threshold,
                   points=points, trust=trust if isinstance(trust, TrustModel) else None)

    def scores(self, parts: Parts, proba: np.ndarray, labels: list[str], vectors: np.ndarray,
               neighbours: Sequence[Sequence[Neighbour]]) -> np.ndarray | None:
        """The trust score of each row's best class; None when the common threshold rules."""
        if self.points is None or self.trust is None:
            return None
        predicted = [labels[c] for c in proba.argmax(axis=1)]
        sim, agree = neighbour_signals(neighbours, predicted)
        x, _, _ = features(parts, self.trust.geometry, vectors, sim, agree, proba=proba)
        return self.trust.score(x)

    def judge(self, label: str, probability: float, trust: float | None) -> tuple[bool, str]:
        """Whether the classifier may answer ``label`` on its own, and why (or why not)."""
        if trust is None or self.points is None:
            sure = probability >= self.threshold
            sign = ">=" if sure else "<"
            return sure, f"calibrated probability {probability:.3f} {sign} {self.threshold:.3f}"
        point = self.points.classes.get(label)
        if point is None or point.threshold is None:
            return False, (f"class {label!r} has not earned automatic answers (too little "
                           "evidence for its precision bound)")
        sure = trust >= point.threshold
        return sure, (f"trust {trust:.3f} {'>=' if sure else '<'} {label!r} threshold "
                      f"{point.threshold:.3f} (precision >= {point.bound:.1%} at "
                      f"{self.points.confidence:.0%} confidence, {point.support} tickets); "
                      f"calibrated probability {probability:.3f}")

"""A trained model bundle on disk: the classifier plus everything needed to reproduce a decision.

``CCA_HOME/models/<version>/`` holds ``classifier.joblib`` and ``bundle.json`` (label set,
department map, embedding model id, rules version, thresholds, data hash, metrics) and
``track_record_seeds.json`` (the cache's leave-one-out track record for this bundle, applied
to the serving cache only when the bundle becomes champion);
``CCA_HOME/models/CURRENT`` names the version the cascade loads; only ``cca train`` without
the registry, a promotion or a rollback (``training.registry``) moves it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import joblib

from cca.classifier import TieredClassifier
from cca.errors import StateError


@dataclass
class BundleInfo:
    version: str
    created_at: str
    data_hash: str
    n_train: int
    labels: list[str]
    departments: dict[str, str]
    embedding_model_id: str
    deep_embedding_model_id: str | None
    rules_version: str
    classifier_threshold: float
    fast_threshold: float
    params: dict
    metrics: dict = field(default_factory=dict)
    # Classes with every ticket kept in fit: this model saw their holdout-hash tickets.
    kept_in_fit: list[str] = field(default_factory=list)
    # Per-class thresholds and their precision bounds (cca.operating_points); {} before them.
    operating_points: dict = field(default_factory=dict)


@dataclass
class ModelBundle:
    info: BundleInfo
    classifier: TieredClassifier

    def save(self, models_dir: Path, make_current: bool = True) -> Path:
        target = models_dir / self.info.version
        target.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.classifier, target / "classifier.joblib", compress=3)
        (target / "bundle.json").write_text(json.dumps(asdict(self.info), indent=2))
        if make_current:
            set_current(models_dir, self.info.version)
        return target


def set_current(models_dir: Path, version: str) -> None:
    """Point ``CURRENT`` at a saved bundle, atomically (a reader sees the old or the new one)."""
    if not (models_dir / version / "bundle.json").exists():
        raise StateError(f"cannot serve {version}: no bundle at {models_dir / version}")
    tmp = models_dir / "CURRENT.tmp"
    tmp.write_text(version)
    tmp.replace(models_dir / "CURRENT")


SEEDS_FILE = "track_record_seeds.json"


def save_track_record_seeds(bundle_dir: Path, model_id: str,
                            seeds: dict[str, tuple[int, int]]) -> None:
    """Per label (reuses, confirmed) as the cache would have done, for embedding ``model_id``."""
    payload = {"model_id": model_id, "seeds": {k: list(v) for k, v in sorted(seeds.items())}}
    (bundle_dir / SEEDS_FILE).write_text(json.dumps(payload, indent=1))


def load_track_record_seeds(
    models_dir: Path, version: str
) -> tuple[str, dict[str, tuple[int, int]]] | None:
    """The bundle's saved seeds, or None for a bundle saved without them."""
    path = models_dir / version / SEEDS_FILE
    if not path.exists():
        return None
    payload = json.loads(path.read_text())
    return payload["model_id"], {k: (int(r), int(c)) for k, (r, c) in payload["seeds"].items()}


def current_version(models_dir: Path) -> str | None:
    """The bundle the cascade serves, or None before the first model."""
    pointer = models_dir / "CURRENT"
    return pointer.read_text().strip() if pointer.exists() else None


def load_bundle_info(models_dir: Path, version: str | None = None) -> BundleInfo | None:
    """The bundle's description without its model (cheap); None when there is none."""
    version = version or current_version(models_dir)
    path = models_dir / version / "bundle.json" if version else None
    if path is None or not path.exists():
        return None
    return BundleInfo(**json.loads(path.read_text()))


def load_bundle(models_dir: Path, version: str | None = None) -> ModelBundle:
    if version is None:
        version = current_version(models_dir)
        if version is None:
            raise StateError(f"no trained model under {models_dir}: run `cca train` first")
    target = models_dir / version
    try:
        info = BundleInfo(**json.loads((target / "bundle.json").read_text()))
        classifier = joblib.load(target / "classifier.joblib")
    except FileNotFoundError as exc:
        raise StateError(f"model bundle {target} is incomplete: {exc.filename} missing") from exc
    return ModelBundle(info=info, classifier=classifier)

"""The model card: what a registered cascade is, what it was trained on and how to undo it.

The card is the run's description in MLflow (and ``model_card.md`` beside the bundle); the
shorter texts here are the experiment's, the registered model's and each version's
descriptions, so every page of the MLflow UI says what it shows without opening a file.
"""

from __future__ import annotations

from typing import Any

from cca.bundle import BundleInfo
from cca.settings import Settings

# Where the docs say how to read the runs and the registry (a path in the repository).
READING_GUIDE = "docs/mlflow.md"


def _pct(x: float) -> str:
    return f"{x:.1%}"


def experiment_description(settings: Settings) -> str:
    return f"""Call Centre Agent retraining: one run per candidate model \
(`cca train`, the weekly Airflow DAG `weekly_retrain`, `make run`).

Each run holds the candidate's parameters, holdout metrics (linked to the logged model and the
holdout dataset), the fit and holdout datasets (ids, labels and text hashes, never text), the
per-class table and chart (`evaluation/`), the model card (the run's description) and, once
the promotion gate has decided, its decision as `gate.*` tags and `gate_*` metrics with the
per-class F1 change against the champion (`gate/`). Registered model:
`{settings.registered_model}`. How to read it: `{READING_GUIDE}`."""


def registered_model_description(info: BundleInfo, settings: Settings) -> str:
    depts = len(set(info.departments.values()))
    return f"""The Call Centre Agent cascade (rules, then a calibrated two-tier classifier with \
per-class operating points) as one pyfunc model: `subject`, `body` -> `label`, `department`, \
`confidence`, `needs_review`, `stage`; {len(info.labels)} labels, {depts} departments.

Aliases: `@champion` is what serves (moved only by the promotion gate, `cca promote` or \
`cca rollback`); `@challenger` is the latest registered candidate, whatever the gate decided \
(it is also `@champion` when that candidate was promoted; shadow mode runs it when it differs).
Each version's tags say what the gate decided and why (`gate.decision`, `gate.reasons`, \
`gate.champion_version`, `gate.delta_macro_f1`, `gate.worst_class`, ...); its run holds the \
model card. How to read it: `{READING_GUIDE}`."""


def version_description(info: BundleInfo, holdout_macro_f1: float, holdout_n: int,
                        gate: str | None = None) -> str:
    """A version's description: what it is, how it scored, and (once decided) the gate."""
    m = info.metrics
    text = (f"cca bundle {info.version}: holdout macro-F1 {holdout_macro_f1:.4f} on "
            f"{holdout_n} tickets, accuracy {_pct(m['holdout_accuracy'])}, cascade coverage "
            f"{_pct(m['holdout_cascade_coverage'])}; {info.n_train} tickets fitted; "
            f"embeddings {info.embedding_model_id} / {info.deep_embedding_model_id}.")
    points = info.operating_points
    if points:
        text += f" {_guarantee_line(points)}."
    return f"{gate}\n\n{text}" if gate else text


def _guarantee_line(points: dict[str, Any]) -> str:
    overall, classes = points["overall"], points["classes"]
    earned = sum(p["status"] == "earned" for p in classes.values())
    verdict = "holds" if overall["holds"] else "does NOT hold"
    return (f"Precision guarantee {verdict}: auto-answered precision bound "
            f"{overall['bound']:.4f} (target {points['target_precision']}) over "
            f"{overall['support']} out-of-fold tickets; {earned} of {len(classes)} classes "
            f"earned a threshold, {len(classes) - earned} go to review")


def _guarantee_section(info: BundleInfo) -> str:
    points = info.operating_points
    if not points:
        return ("\n## Precision guarantee\nNone: this bundle was trained before per-class "
                "operating points.\n")
    review = sorted(c for c, p in points["classes"].items() if p["status"] != "earned")
    named = (f" Sent to review until they earn a threshold: {', '.join(review)}."
             if review else "")
    return f"""
## Precision guarantee
{_guarantee_line(points)}. Method: {points['method']}; confidence {points['confidence']}, \
{points['folds']} folds; per-class minimum precision {points['class_min_precision']}.{named}
Per-class thresholds and bounds: `evaluation/per_class_report.csv`, `evaluation/per_class.png`.
"""


def render_model_card(info: BundleInfo, settings: Settings, n_holdout: int, window: str,
                      run_id: str) -> str:
    """Markdown for people deciding whether to promote, or wondering what is serving."""
    m, kept_in_fit = info.metrics, info.kept_in_fit
    depts = sorted(set(info.departments.values()))
    small = (f"\n- {len(kept_in_fit)} class(es) had no ticket outside the holdout and were "
             f"trained on all their tickets (not held out): {', '.join(kept_in_fit)}."
             if kept_in_fit else "")
    ids = (f"`{info.embedding_model_id}` (cache, fast tier), "
           f"`{info.deep_embedding_model_id}` (deep tier)")
    review = (f"{info.classifier_threshold:.4f} (target precision "
              f"{settings.classifier_target_precision})")
    early = (f"{_pct(m['holdout_rules_cache_share'])} "
             f"({_pct(m['holdout_rules_cache_accuracy'])} right)")
    late = (f"{_pct(m['holdout_classifier_share'])} "
            f"({_pct(m['holdout_classifier_accuracy'])} right)")
    return f"""# Model card: {settings.registered_model} bundle `{info.version}`

## What it is
The Call Centre Agent cascade bundle: a two-tier classifier (TF-IDF + static MiniLM, then
TF-IDF + contextual MiniLM for uncertain tickets) with temperature calibration, the rule file
it was trained with, its review threshold and label/department map. It routes a service-desk
ticket to one of {len(info.labels)} labels and {len(depts)} departments, or to human review.

Input: the raw `subject` and `body`. Rules see them as they are; PII is then redacted with
the same sanitizer as the training data (typed placeholders, keyed customer pseudonyms)
before anything reaches an embedding model or the classifier. The pseudonym key is the
loading environment's `CCA_PII_HMAC_KEY`, else a random key created once under
`CCA_HOME/secrets`; only the customer tokens inside the redacted text depend on it.

| | |
|---|---|
| MLflow run | `{run_id}` |
| data hash | `{info.data_hash}` |
| rules version | `{info.rules_version}` |
| embedding models | {ids} |
| review threshold | {review} |
| fast-tier threshold | {info.fast_threshold:.4f} |

## Data
Validated labels on redacted, non-duplicate tickets, {window}. {info.n_train} tickets fitted,
{n_holdout} held out. The holdout is chosen by a hash of the ticket id (fraction
{settings.train_holdout_fraction}), so no model of this project trains on a holdout ticket
(except those of classes kept whole in fit, below) and candidates and champions are compared
on the same tickets; classes a champion kept whole are left out of that comparison.{small}

## Holdout metrics
| metric | value |
|---|---|
| classifier top-1 accuracy | {_pct(m["holdout_accuracy"])} |
| classifier macro-F1 (promotion gate) | {m["holdout_macro_f1"]:.4f} |
| cascade coverage (not sent to review) | {_pct(m["holdout_cascade_coverage"])} |
| accuracy of automatic answers | {_pct(m["holdout_auto_accuracy"])} |
| answered by rules + cache | {early} |
| answered by the classifier | {late} |
| tickets needing the deep tier | {_pct(m["holdout_share_using_deep_embedding"])} |
{_guarantee_section(info)}
Promotion to `@champion` needs macro-F1 ≥ {settings.promotion_min_macro_f1}, no worse than the
champion on the same holdout (tolerance {settings.promotion_tolerance}), no class losing
more than {settings.promotion_max_class_drop} F1, and the champion's precision guarantee kept
(its overall bound holding where the champion's held, no class it had earned sent to review).

## Intended use
Routing and triage of service-desk tickets in the domain of the training labels, with a
person reviewing whatever falls below the threshold. Not for decisions about a customer
without that review, and not for text outside the trained label set (it goes to review or,
worse, to the nearest label).

## Limitations
- The MLflow pyfunc runs rules + classifier only: the vector cache needs the PostgreSQL
  index, so served accuracy and coverage (the full cascade) differ from the pyfunc's.
- The holdout is small when the window is: per-class F1 on a class with a handful of
  holdout tickets moves in large steps.
- Embedding models are resolved from the loading environment and must match the ids above.

## How to roll back
`cca rollback --reason "..."` moves `@champion` back to the previous champion and points
`CCA_HOME/models/CURRENT` at its bundle; `cca promote VERSION --reason "..."` serves any
registered version. Both are recorded in the `model_events` table and as model-version tags.
"""

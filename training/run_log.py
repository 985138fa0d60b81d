"""Everything one training run leaves in MLflow, so a registered model explains itself.

Params (classifier params, window, holdout fraction, thresholds, embedding model ids, rules
version, data hash), holdout metrics, the fit and holdout datasets (ids, labels and text
hashes, never the text), a confusion-matrix plot, the per-class report, the model card, and
the pyfunc model itself.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import mlflow
import mlflow.data
import numpy as np
import pandas as pd
from sklearn.metrics import classification_report, confusion_matrix

from cca.bundle import ModelBundle
from cca.settings import Settings
from training.model_card import render_model_card
from training.pyfunc_cascade import INPUT_COLUMNS, log_cascade_model
from training.results import LoggedRun
from training.train_classifier import TrainReport

SIGNATURE_ROWS = 5
TOP_CONFUSIONS = 20


def confusion_figures(y_true: list[str], y_pred: list[str]) -> tuple[Any, Any, pd.DataFrame]:
    """A row-normalised confusion matrix readable at 77 classes, and the top confused pairs."""
    # deferred: matplotlib is a heavy import, and the Agg backend must be chosen before pyplot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted(set(y_true) | set(y_pred))
    counts = confusion_matrix(y_true, y_pred, labels=labels)
    norm = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    size = min(max(6.0, 0.17 * n + 3), 20.0)
    font = 9 if n <= 20 else 6 if n <= 60 else 5
    fig, ax = plt.subplots(figsize=(size, size))
    # square-root colour scale: a 5 % confusion is visible next to a 95 % diagonal
    image = ax.imshow(norm, cmap="Blues", norm=matplotlib.colors.PowerNorm(0.5, vmin=0, vmax=1),
                      interpolation="nearest")
    ax.set_xticks(range(n), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (row-normalised)")
    ax.set_title(f"Holdout confusion matrix ({len(y_true)} tickets)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    off = [(int(counts[i, j]), labels[i], labels[j])
           for i in range(n) for j in range(n) if i != j and counts[i, j]]
    off.sort(key=lambda t: (-t[0], t[1], t[2]))
    pairs = pd.DataFrame(off[:TOP_CONFUSIONS], columns=["count", "true", "predicted"])
    bars, bax = plt.subplots(figsize=(8, max(2.0, 0.3 * len(pairs) + 1)))
    if len(pairs):
        bax.barh([f"{t} → {p}" for t, p in zip(pairs["true"], pairs["predicted"], strict=True)],
                 pairs["count"], color="tab:red")
        bax.invert_yaxis()
    bax.set_title("Most confused pairs on the holdout" if len(pairs) else "No confusions")
    bax.set_xlabel("tickets")
    bars.tight_layout()
    return fig, bars, pairs


def log_training_run(settings: Settings, bundle: ModelBundle, report: TrainReport,
                     window: str, experiment_id: str) -> LoggedRun:
    """One MLflow run for one candidate; call inside ``tracking.mlflow_session``."""
    t0 = time.perf_counter()
    info = bundle.info
    bundle_dir = settings.models_dir / info.version
    with mlflow.start_run(experiment_id=experiment_id, run_name=info.version) as run:
        mlflow.set_tags({"bundle_version": info.version, "cca.step": "train_candidate"})
        _log_params_and_metrics(settings, bundle, report, window)
        _log_datasets(report, info.data_hash)
        _log_evaluation(report)
        card = render_model_card(info, settings, report.n_holdout, window, run.info.run_id)
        (bundle_dir / "model_card.md").write_text(card)  # travels with the bundle and model
        mlflow.log_text(card, "model_card.md")
        mlflow.log_dict(asdict(info), "bundle.json")
        example = pd.DataFrame({"subject": "", "body": report.holdout_texts[:SIGNATURE_ROWS]},
                               columns=INPUT_COLUMNS)
        t1 = time.perf_counter()
        model_info = log_cascade_model(bundle_dir, settings, example)
        pyfunc_seconds = time.perf_counter() - t1
    return LoggedRun(run_id=run.info.run_id, model_uri=model_info.model_uri,
                     model_id=getattr(model_info, "model_id", None),
                     mlflow_seconds=round(time.perf_counter() - t0, 2),
                     pyfunc_log_seconds=round(pyfunc_seconds, 2))


def _log_params_and_metrics(settings: Settings, bundle: ModelBundle, report: TrainReport,
                            window: str) -> None:
    info = bundle.info
    mlflow.log_params({
        **{f"clf_{k}": v for k, v in info.params.items()},
        "train_window": window, "train_holdout_fraction": settings.train_holdout_fraction,
        "classifier_threshold": round(info.classifier_threshold, 6),
        "fast_threshold": round(info.fast_threshold, 6),
        "classifier_target_precision": settings.classifier_target_precision,
        "rules_min_confidence": settings.rules_min_confidence,
        "embedding_model_id": info.embedding_model_id,
        "deep_embedding_model_id": info.deep_embedding_model_id,
        "rules_version": info.rules_version, "data_hash": info.data_hash,
        "n_fit": report.n_train, "n_holdout": report.n_holdout, "n_labels": report.labels,
        "kept_in_fit": ",".join(report.kept_in_fit)[:500] or "-",
    })
    mlflow.log_metrics({k: float(v) for k, v in info.metrics.items()}
                       | {"fit_seconds": report.fit_seconds})


def _log_datasets(report: TrainReport, data_hash: str) -> None:
    """The fit and holdout tickets as MLflow datasets: ids, labels and text hashes only."""
    for context, ids, labels, hashes in (
        ("training", report.fit_ids, report.fit_labels, report.fit_hashes),
        ("evaluation", report.holdout_ids, report.holdout_true, report.holdout_hashes),
    ):
        frame = pd.DataFrame({"id": ids, "label": labels, "text_sha256": hashes})
        name = f"tickets-{'fit' if context == 'training' else 'holdout'}-{data_hash[:8]}"
        mlflow.log_input(mlflow.data.from_pandas(frame, name=name, targets="label"),
                         context=context)


def _log_evaluation(report: TrainReport) -> None:
    """Confusion matrix, most confused pairs and the per-class report on the holdout."""
    # deferred: matplotlib is a heavy import (confusion_figures has loaded it by now)
    import matplotlib.pyplot as plt

    matrix, pairs_fig, pairs = confusion_figures(report.holdout_true, report.holdout_pred)
    mlflow.log_figure(matrix, "evaluation/confusion_matrix.png")
    mlflow.log_figure(pairs_fig, "evaluation/top_confusions.png")
    plt.close(matrix)
    plt.close(pairs_fig)
    mlflow.log_text(pairs.to_csv(index=False), "evaluation/top_confusions.csv")
    per_class = classification_report(report.holdout_true, report.holdout_pred,
                                      output_dict=True, zero_division=0)
    mlflow.log_dict(per_class, "evaluation/per_class_report.json")
    mlflow.log_text(pd.DataFrame(per_class).T.to_csv(), "evaluation/per_class_report.csv")

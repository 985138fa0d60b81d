"""Everything one training run leaves in MLflow, so a registered model explains itself.

Params (classifier params, window, holdout fraction, thresholds, embedding model ids, rules
version, data hash), the fit and holdout datasets (ids, labels and text hashes, never the
text), the pyfunc model, holdout metrics linked to that model and to the holdout dataset (so
the model's page says what it was measured on), a per-class table and chart, a confusion
view readable at 77 classes, the model card as the run's description. What the promotion
gate decided is added to the run later by ``training.gate_log``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import mlflow
import mlflow.data
import pandas as pd
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from cca.bundle import ModelBundle
from cca.settings import Settings
from training import charts
from training.model_card import render_model_card
from training.pyfunc_cascade import INPUT_COLUMNS, log_cascade_model
from training.results import LoggedRun
from training.tracking import NOTE
from training.train_classifier import TrainReport

SIGNATURE_ROWS = 5
# Columns of per_class_report.csv taken from the bundle's operating points, renamed where
# the holdout report already has the name (its ``support`` is holdout tickets).
OPERATING_COLUMNS = {"threshold": "threshold", "precision": "oof_precision",
                     "bound": "precision_bound", "support": "bound_support",
                     "n": "oof_n", "expected_coverage": "expected_coverage",
                     "status": "status"}


def log_training_run(settings: Settings, bundle: ModelBundle, report: TrainReport,
                     window: str, experiment_id: str) -> LoggedRun:
    """One MLflow run for one candidate; call inside ``tracking.mlflow_session``."""
    t0 = time.perf_counter()
    info = bundle.info
    bundle_dir = settings.models_dir / info.version
    with mlflow.start_run(experiment_id=experiment_id, run_name=info.version) as run:
        card = render_model_card(info, settings, report.n_holdout, window, run.info.run_id)
        mlflow.set_tags({"bundle_version": info.version, "cca.step": "train_candidate",
                         NOTE: card})
        _log_params(settings, bundle, report, window)
        mlflow.log_metrics({"fit_seconds": report.fit_seconds})  # not measured on the holdout
        holdout = _log_datasets(report, info.data_hash)
        _log_evaluation(report, info.operating_points)
        (bundle_dir / "model_card.md").write_text(card)  # travels with the bundle and model
        mlflow.log_text(card, "model_card.md")
        mlflow.log_dict(asdict(info), "bundle.json")
        example = pd.DataFrame({"subject": "", "body": report.holdout_texts[:SIGNATURE_ROWS]},
                               columns=INPUT_COLUMNS)
        t1 = time.perf_counter()
        model_info = log_cascade_model(bundle_dir, settings, example)
        pyfunc_seconds = time.perf_counter() - t1
        model_id = getattr(model_info, "model_id", None)
        # linked to the model and the holdout: the model page lists "Datasets used"
        mlflow.log_metrics({k: float(v) for k, v in info.metrics.items()},
                           model_id=model_id, dataset=holdout)
    return LoggedRun(run_id=run.info.run_id, model_uri=model_info.model_uri,
                     model_id=model_id, mlflow_seconds=round(time.perf_counter() - t0, 2),
                     pyfunc_log_seconds=round(pyfunc_seconds, 2))


def _log_params(settings: Settings, bundle: ModelBundle, report: TrainReport,
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


def _log_datasets(report: TrainReport, data_hash: str) -> Any:
    """The fit and holdout tickets as MLflow datasets (ids, labels and text hashes only);
    returns the holdout dataset, which the holdout metrics are linked to."""
    holdout = None
    for context, ids, labels, hashes in (
        ("training", report.fit_ids, report.fit_labels, report.fit_hashes),
        ("evaluation", report.holdout_ids, report.holdout_true, report.holdout_hashes),
    ):
        frame = pd.DataFrame({"id": ids, "label": labels, "text_sha256": hashes})
        name = f"tickets-{'fit' if context == 'training' else 'holdout'}-{data_hash[:8]}"
        dataset = mlflow.data.from_pandas(frame, name=name, targets="label")
        mlflow.log_input(dataset, context=context)
        holdout = dataset
    return holdout


def per_class_table(y_true: list[str], y_pred: list[str],
                    operating: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per class (holdout precision, recall, F1, support, and the class's operating
    point when the bundle has them), and the summary rows kept apart from the classes."""
    labels = sorted(set(y_true) | set(y_pred))
    p, r, f, n = precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                 zero_division=0)
    table = pd.DataFrame({"class": labels, "precision": p, "recall": r, "f1": f,
                          "support": n.astype(int)})
    points = operating.get("classes", {})
    for key, column in OPERATING_COLUMNS.items():
        if points:
            table[column] = [points.get(c, {}).get(key) for c in labels]
    summary = pd.DataFrame([  # what sklearn's report appends as rows: apart from the classes
        {"metric": "accuracy", "value": accuracy_score(y_true, y_pred)},
        {"metric": "macro_avg_precision", "value": p.mean()},
        {"metric": "macro_avg_recall", "value": r.mean()},
        {"metric": "macro_avg_f1", "value": f.mean()},
        {"metric": "weighted_avg_f1", "value": (f * n).sum() / max(n.sum(), 1)},
        {"metric": "classes", "value": len(labels)},
        {"metric": "holdout_tickets", "value": len(y_true)},
    ])
    return table.round(6), summary.round(6)


def _log_evaluation(report: TrainReport, operating: dict[str, Any]) -> None:
    """The per-class table and chart, the confusion view and the most confused pairs."""
    counts = charts.confusion_counts(report.holdout_true, report.holdout_pred)
    pairs = charts.confused_pairs(counts)
    table, summary = per_class_table(report.holdout_true, report.holdout_pred, operating)
    matrix, pairs_fig = charts.confusion_figure(counts), charts.pairs_figure(pairs)
    per_class = charts.per_class_figure(table)
    mlflow.log_figure(matrix, "evaluation/confusion_matrix.png")
    mlflow.log_figure(pairs_fig, "evaluation/top_confusions.png")
    mlflow.log_figure(per_class, "evaluation/per_class.png")
    charts.close(matrix, pairs_fig, per_class)
    mlflow.log_text(counts.to_csv(), "evaluation/confusion_matrix.csv")
    mlflow.log_text(pairs.to_csv(index=False), "evaluation/top_confusions.csv")
    mlflow.log_text(table.to_csv(index=False), "evaluation/per_class_report.csv")
    mlflow.log_text(summary.to_csv(index=False), "evaluation/summary.csv")
    rows = table.astype(object).where(table.notna(), None)  # JSON has null, not NaN
    mlflow.log_dict({"classes": rows.to_dict(orient="records"),
                     "summary": dict(zip(summary["metric"], summary["value"], strict=True))},
                    "evaluation/per_class_report.json")
    if operating:
        mlflow.log_dict(operating, "evaluation/operating_points.json")

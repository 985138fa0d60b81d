"""The figures a run and a gate decision leave in MLflow, drawn to be read at 77 classes.

Every per-class figure is a horizontal bar chart, one bar per class, sorted worst first, on
a figure that grows in height with the number of classes: class names stay horizontal and
legible, and the eye starts where the problems are. A full confusion matrix is not readable
in the MLflow viewer past a couple of dozen classes, so the matrix drawn is the sub-matrix
of the classes most involved in confusions (all of them when there are few); the full
counts go to a CSV beside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

TOP_CONFUSIONS = 20  # most confused pairs, as a bar chart and CSV
TOP_CLASSES = 20  # classes in the confusion sub-matrix


def _pyplot() -> Any:
    # deferred: matplotlib is a heavy import, and the Agg backend must be chosen before pyplot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _tall(n: int, per_bar: float = 0.24, width: float = 9.0) -> tuple[float, float]:
    """A figure size that gives each of ``n`` bars room for a 7-point class name."""
    return width, max(3.0, per_bar * n + 1.6)


def confusion_counts(y_true: list[str], y_pred: list[str]) -> pd.DataFrame:
    """The full confusion matrix as counts: rows true, columns predicted, labelled."""
    labels = sorted(set(y_true) | set(y_pred))
    counts = confusion_matrix(y_true, y_pred, labels=labels)
    frame = pd.DataFrame(counts, index=labels, columns=labels)
    frame.index.name = "true"
    return frame


def most_confused_classes(counts: pd.DataFrame, top: int = TOP_CLASSES) -> list[str]:
    """The ``top`` classes with the most off-diagonal tickets, as truth or as prediction;
    every class when there are no more than ``top``."""
    if len(counts) <= top:
        return list(counts.index)
    values = counts.to_numpy()
    off = values - np.diag(np.diag(values))
    involvement = pd.Series(off.sum(axis=0) + off.sum(axis=1), index=counts.index)
    ranked = involvement[involvement > 0].sort_values(ascending=False, kind="stable")
    return sorted(ranked.index[:top])


def confusion_figure(counts: pd.DataFrame, top: int = TOP_CLASSES) -> Any:
    """Row-normalised confusion among the most confused classes, counts written in cells.

    Rows are normalised over the class's whole row (not only the columns shown), so a cell
    reads "share of this class's holdout tickets predicted as that class".
    """
    plt = _pyplot()
    import matplotlib.colors  # deferred: loaded with pyplot above

    shown = most_confused_classes(counts, top) or list(counts.index[:top])
    totals = counts.sum(axis=1)
    sub = counts.loc[shown, shown]
    norm = sub.to_numpy() / np.maximum(totals.loc[shown].to_numpy()[:, None], 1)
    n = len(shown)
    side = min(max(5.0, 0.42 * n + 3.0), 14.0)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    # square-root colour scale: a 5 % confusion is visible next to a 95 % diagonal
    image = ax.imshow(norm, cmap="Blues", interpolation="nearest",
                      norm=matplotlib.colors.PowerNorm(0.5, vmin=0, vmax=1))
    for (i, j), value in np.ndenumerate(sub.to_numpy()):
        if value:
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), shown, rotation=90, fontsize=8)
    ax.set_yticks(range(n), shown, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (colour: share of the class's row)")
    which = (f"the {n} most confused of {len(counts)} classes" if n < len(counts)
             else f"{n} classes")
    ax.set_title(f"Holdout confusion, {which} ({int(totals.sum())} tickets)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def confused_pairs(counts: pd.DataFrame, top: int = TOP_CONFUSIONS) -> pd.DataFrame:
    """The ``top`` (true, predicted) pairs with the most tickets, largest first."""
    values, labels = counts.to_numpy(), list(counts.index)
    off = [(int(values[i, j]), labels[i], labels[j])
           for i in range(len(labels)) for j in range(len(labels))
           if i != j and values[i, j]]
    off.sort(key=lambda t: (-t[0], t[1], t[2]))
    return pd.DataFrame(off[:top], columns=["count", "true", "predicted"])


def pairs_figure(pairs: pd.DataFrame) -> Any:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, max(2.0, 0.3 * len(pairs) + 1)))
    if len(pairs):
        ax.barh([f"{t} → {p}" for t, p in zip(pairs["true"], pairs["predicted"], strict=True)],
                pairs["count"], color="tab:red")
        ax.invert_yaxis()
    ax.set_title("Most confused pairs on the holdout" if len(pairs) else "No confusions")
    ax.set_xlabel("tickets")
    fig.tight_layout()
    return fig


def per_class_figure(table: pd.DataFrame) -> Any:
    """Holdout F1 per class and, where trained with operating points, the lower confidence
    bound of the precision of its automatic answers; worst F1 at the top, classes sent to
    review marked."""
    plt = _pyplot()
    rows = table.sort_values(["f1", "class"], ascending=[True, True], kind="stable")
    n = len(rows)
    fig, ax = plt.subplots(figsize=_tall(n))
    y = np.arange(n)
    has_bound = "precision_bound" in rows and rows["precision_bound"].notna().any()
    height = 0.4 if has_bound else 0.8
    ax.barh(y - (height / 2 if has_bound else 0), rows["f1"], height=height,
            color="tab:blue", label="holdout F1")
    if has_bound:
        ax.barh(y + height / 2, rows["precision_bound"].fillna(0.0), height=height,
                color="tab:orange", label="precision bound (out-of-fold, 95 %)")
    names = [f"{c}  [review]" if s == "review" else c
             for c, s in zip(rows["class"], rows.get("status", [""] * n), strict=True)]
    ax.set_yticks(y, names, fontsize=7)
    ax.set_ylim(n - 0.5, -0.5)  # worst first, at the top
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("score")
    ax.xaxis.set_ticks_position("both")
    ax.tick_params(axis="x", labeltop=True)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"Per class, worst F1 first ({n} classes)", pad=24)
    _legend_on_top(fig)
    return fig


def delta_figure(candidate: dict[str, float], champion: dict[str, float],
                 max_drop: float, title: str) -> Any:
    """Candidate minus champion F1 per class compared, largest fall at the top; bars past
    the gate's allowed drop in red, with the limit drawn."""
    plt = _pyplot()
    delta = sorted(((candidate.get(c, 0.0) - f1, c) for c, f1 in champion.items()),
                   key=lambda t: (t[0], t[1]))
    n = len(delta)
    fig, ax = plt.subplots(figsize=_tall(n))
    values = [d for d, _ in delta]
    colours = ["tab:red" if d < -max_drop - 1e-9 else "tab:orange" if d < 0 else "tab:green"
               for d in values]
    ax.barh(np.arange(n), values, color=colours)
    ax.set_yticks(np.arange(n), [c for _, c in delta], fontsize=7)
    ax.set_ylim(n - 0.5, -0.5)
    ax.axvline(-max_drop, color="tab:red", linestyle="--", linewidth=1,
               label=f"allowed drop -{max_drop:.3f}")
    ax.axvline(0, color="black", linewidth=0.8)
    span = max([abs(v) for v in values] + [max_drop * 1.5])
    ax.set_xlim(-span * 1.1, span * 1.1)
    ax.set_xlabel("F1 change on the same holdout (candidate - champion)")
    ax.xaxis.set_ticks_position("both")
    ax.tick_params(axis="x", labeltop=True)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, pad=24)
    _legend_on_top(fig)
    return fig


def _legend_on_top(fig: Any) -> None:
    """The legend in a strip above the plot: on a tall bar chart there is no empty corner."""
    height = fig.get_figheight()
    fig.legend(loc="upper center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / height))


def close(*figures: Any) -> None:
    plt = _pyplot()
    for fig in figures:
        plt.close(fig)

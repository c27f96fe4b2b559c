"""The figures logged to MLflow runs: a trial's confusion matrix, a study's anytime curve, its trials' learning
curves and its parameter importance. Each returns a matplotlib figure (closed by the caller after logging)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import ConfusionMatrixDisplay

from tune import outcomes


def anytime_figure(points: list[tuple[float, float]], metric: str, budget_s: float | None):
    """The study's best `metric` so far against wall time (anytime performance), with the time budget's end."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    minutes = [t / 60 for t, _ in points]
    end = max(minutes[-1], (budget_s or 0) / 60)
    ax.step(minutes + [end], [v for _, v in points] + [points[-1][1]], where="post")
    if budget_s:
        ax.axvline(budget_s / 60, color="gray", linestyle="--", label="time budget")
        ax.legend(loc="lower right")
    ax.set(xlabel="minutes since the study started", ylabel=f"best {metric} so far", title="Anytime performance")
    fig.tight_layout()
    return fig

def confusion_figure(confusion: list[list[int]], names: list[str], title: str):
    """A confusion matrix (rows: the truth) with its classes' names."""
    size = 4 + 0.35 * len(names)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(pd.DataFrame(confusion).to_numpy(), display_labels=names).plot(
        ax=ax, colorbar=False, xticks_rotation=90, values_format="d")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def curves_figure(rows: list, study: str, metric: str):
    """Each trial's `metric` per epoch (rows: tune.report's TrialRow, best first), the best trial drawn bold."""
    best_id = next((r.trial_id for r in rows if r.best is not None), None)  # rows are ranked
    fig, ax = plt.subplots(figsize=(9, 5.5))
    if len(rows) > 10:
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    for r in rows:
        if not r.curve:
            continue
        epochs, values = zip(*r.curve, strict=True)
        is_best = r.trial_id == best_id
        ax.plot(epochs, values, marker="o", markersize=3, linestyle="--" if r.outcome == outcomes.FAILED else "-",
                linewidth=2.5 if is_best else 1.2, zorder=3 if is_best else 2,
                label=f"{r.trial_id} ({r.outcome}){' best' if is_best else ''}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{study}: {metric} per epoch, {sum(bool(r.curve) for r in rows)} trials")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if sum(bool(r.curve) for r in rows) <= 30:
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig

def importance_figure(importances: dict[str, float], study: str, metric: str):
    """Optuna's parameter importance as bars."""
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 1.5 + 0.45 * len(names)))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (sums to 1)")
    ax.set_title(f"{study}: parameter importance for {metric}")
    fig.tight_layout()
    return fig

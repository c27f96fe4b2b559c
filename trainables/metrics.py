"""Validation metrics from a model's outputs: macro F1 (the competition's score), accuracy, confusion matrix.

Predictions are read in the competition's classes (`outputs.task_probabilities`) and scored against the
ground truth banded at `data.score_age_bounds`, whatever bounds or age head the model was trained with. For
`all` and `multi` the 18-class prediction is also split into mask, gender and age, so every 18-class task
reports the same per-task scores.
"""
from __future__ import annotations

import numpy as np

from trainables.config import TrialConfig
from trainables.data import HEADS, compose18, decompose18
from trainables.outputs import predicted_ages, predicted_classes, task_probabilities


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    from sklearn.metrics import f1_score  # imported when scoring: it takes a second

    return float(f1_score(y_true, y_pred, labels=list(range(n_classes)), average="macro", zero_division=0))


def score(cfg: TrialConfig, outputs: np.ndarray, truth: np.ndarray, ages: np.ndarray | None = None) -> dict:
    """val_f1, val_acc, the per-task F1 of the 18-class tasks, and the confusion matrix of the task's classes.

    outputs: the model's raw outputs (N, columns). truth: the competition's labels of the task, banded at
    data.score_age_bounds (`data.targets(table, task, cfg.data.score_age_bounds)`): (N,) class ids, or (N, 3)
    for multi. ages: the true ages in years; with a regressing age head, val_age_mae is reported too.
    """
    task = cfg.task
    pred = predicted_classes(task, task_probabilities(cfg, outputs))
    true = compose18(*truth.T) if task == "multi" else truth
    n = 18 if task in ("all", "multi") else HEADS[task]
    out = {"val_f1": macro_f1(true, pred, n), "val_acc": float((pred == true).mean())}
    if n == 18:
        out["val_f1_18"] = out["val_f1"]
        for name, t, p in zip(HEADS, decompose18(true), decompose18(pred), strict=True):
            out[f"val_f1_{name}"] = macro_f1(t, p, HEADS[name])
    if cfg.model.age_head == "regress" and ages is not None:
        out["val_age_mae"] = float(np.abs(predicted_ages(cfg, outputs) - ages).mean())
    from sklearn.metrics import confusion_matrix  # imported when scoring: it takes a second

    out["confusion"] = confusion_matrix(true, pred, labels=list(range(n))).tolist()
    return out


def per_class_report(confusion: list[list[int]], names: list[str]) -> list[dict]:
    """Precision, recall, F1 and support of each class, from a confusion matrix (rows: true, columns: predicted)."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return [{"class": name, "precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4),
             "support": int(s)} for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)]

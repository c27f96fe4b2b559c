"""A model's raw outputs read as the competition's classes: per-task probabilities, predicted classes and ages.

The output's columns follow `data.heads(task, age_head)`. Whatever the model was trained on, its outputs
are read back in the competition's classes: mask (3), gender (2) and age band (3). A classifying age head
trained with other `data.age_bounds` (say >= 58 as old) keeps its band numbers (its band 2 counts as the
competition's band 2); a regressing age head's age is cut into bands at `data.age_bounds` and given as a
one-hot "probability". The validation metrics and a soft-voting prediction both start from
`task_probabilities`, so they read a model the same way.
"""
from __future__ import annotations

import numpy as np

from trainables import data
from trainables.config import TrialConfig


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def split_heads(cfg: TrialConfig, outputs: np.ndarray) -> dict[str, np.ndarray]:
    """The output's columns of each head (mask, gender, age, or all), as (N, columns) arrays."""
    layout = data.heads(cfg.task, cfg.model.age_head)
    if outputs.ndim != 2 or outputs.shape[1] != sum(layout.values()):
        raise ValueError(f"task {cfg.task} (age head {cfg.model.age_head}) has {sum(layout.values())} outputs, "
                         f"got an array of shape {outputs.shape}")
    parts = np.split(outputs, np.cumsum(list(layout.values()))[:-1], axis=1)
    return dict(zip(layout, parts, strict=True))


def predicted_ages(cfg: TrialConfig, outputs: np.ndarray) -> np.ndarray:
    """The ages (years, float) a regressing age head predicts."""
    if cfg.model.age_head != "regress":
        raise ValueError("only a regressing age head (model.age_head: regress) predicts ages")
    return data.target_to_age(split_heads(cfg, outputs)["age"][:, 0].astype(np.float64))


def task_probabilities(cfg: TrialConfig, outputs: np.ndarray) -> dict[str, np.ndarray]:
    """Per-task class probabilities of raw outputs (N, columns): keys among mask (N, 3), gender (N, 2), age (N, 3).

    Task all gives the three marginals of its 18-class softmax; a regressing age head, the one-hot of its band.
    """
    parts = split_heads(cfg, outputs)
    if cfg.task == "all":
        joint = softmax(parts["all"]).reshape(-1, *data.HEADS.values())  # class = 6 * mask + 3 * gender + age
        return {"mask": joint.sum(axis=(2, 3)), "gender": joint.sum(axis=(1, 3)), "age": joint.sum(axis=(1, 2))}
    probabilities = {}
    for name, part in parts.items():
        if name == "age" and cfg.model.age_head == "regress":
            band = data.age_band(predicted_ages(cfg, outputs), cfg.data.age_bounds)
            probabilities[name] = np.eye(data.HEADS["age"])[band]
        else:
            probabilities[name] = softmax(part)
    return probabilities


def predicted_classes(task: str, probabilities: dict[str, np.ndarray]) -> np.ndarray:
    """Class ids from per-task probabilities: the argmax of the task's; for all and multi, the 18-class id
    composed of each task's argmax."""
    if task in ("all", "multi"):
        return data.compose18(*(probabilities[name].argmax(axis=1) for name in data.HEADS))
    return probabilities[task].argmax(axis=1)

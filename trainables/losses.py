"""Losses: cross-entropy (label smoothing, class weights), focal (with label smoothing too) and soft macro F1.

`TaskLoss` applies the configured loss to each head of a model's output: one head for the single tasks and
`all`, three (mask, gender, age) summed for `multi`. A regressing age head (model.age_head: regress) always
takes `age_regression_loss` (smooth L1 on the scaled age); the loss section (name, label smoothing, gamma,
class weights) applies to the classifying heads only.

A batch mixed by CutMix or MixUp (`mixing.py`) comes with soft targets, one per head: class probabilities
with the label smoothing already in them, and a regressing head's mixed age. Cross-entropy and focal take
them as they are (a class-weighted cross-entropy then averages over the batch, not over the weights); soft
macro F1 counts each photo's share of a class as a fractional true label of it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables import data
from trainables.config import LossConfig


def smoothed_one_hot(target: torch.Tensor, n_classes: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """(N,) class ids as (N, n_classes) probabilities: 1 - s + s / n on the class, s / n elsewhere."""
    return F.one_hot(target.long(), n_classes).float() * (1 - label_smoothing) + label_smoothing / n_classes


def focal_loss(logits: torch.Tensor, q: torch.Tensor, gamma: float, weight: torch.Tensor | None = None
               ) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) over target probabilities q (N, C): sum_c -q_c (1 - p_c)^gamma log p_c, mean
    over the batch."""
    log_p = F.log_softmax(logits.float(), dim=1)
    per_class = -q * (1 - log_p.exp()).pow(gamma) * log_p
    if weight is not None:
        per_class = per_class * weight.view(1, -1)
    return per_class.sum(dim=1).mean()


def soft_f1_loss(logits: torch.Tensor, y: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - macro F1 computed on softmax probabilities (differentiable) against target probabilities y (N, C)."""
    p = F.softmax(logits.float(), dim=1)
    tp = (p * y).sum(0)
    f1 = 2 * tp / (p.sum(0) + y.sum(0) + eps)
    return 1 - f1.mean()


def age_regression_loss(prediction: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
    """Smooth L1 between a regression head's output (N,) and the scaled true age (`data.age_to_target`)."""
    return F.smooth_l1_loss(prediction.float(), data.age_to_target(age.float()))


def balanced_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Class weights n / (k * count), as scikit-learn's 'balanced' (absent classes get weight 1)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(w, dtype=torch.float32)


class TaskLoss(nn.Module):
    """The configured loss summed over the heads of a model's output (`data.heads(task, age_head)`).

    train_labels: (N,) or (N, heads) training labels (`data.targets`), used for balanced class weights; the
    age column holds ages in years for a regressing age head, which takes no class weights.
    """

    def __init__(self, cfg: LossConfig, task: str, train_labels: np.ndarray, age_head: str = "classify"):
        super().__init__()
        layout = data.heads(task, age_head)
        self.cfg, self.heads = cfg, list(layout.values())
        self.smoothing = cfg.label_smoothing if cfg.name != "f1" else 0.0  # cross_entropy and focal only
        self.regress = [name == "age" and age_head == "regress" for name in layout]
        labels = train_labels.reshape(len(train_labels), -1)
        for i, n in enumerate(self.heads):
            balanced = cfg.class_weights == "balanced" and not self.regress[i]
            self.register_buffer(f"weight{i}", balanced_weights(labels[:, i], n) if balanced else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """target: the labels (`data.targets`), or a mixed batch's soft targets, one tensor per head."""
        if isinstance(target, torch.Tensor):
            target = target.reshape(len(target), -1)
            target = [target[:, i] for i in range(target.shape[1])]
        total = logits.new_zeros((), dtype=torch.float32)
        for i, part in enumerate(logits.split(self.heads, dim=1)):
            if self.regress[i]:
                total = total + age_regression_loss(part[:, 0], target[i])
            else:
                total = total + self._one(part, target[i], getattr(self, f"weight{i}"))
        return total

    def _one(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """One classifying head's loss, for class ids (N,) or soft targets (N, C) that hold their smoothing."""
        cfg, soft = self.cfg, target.ndim == 2
        if cfg.name == "cross_entropy":
            smoothing = 0.0 if soft else self.smoothing
            return F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=smoothing)
        q = target if soft else smoothed_one_hot(target, logits.shape[1], self.smoothing)
        if cfg.name == "focal":
            return focal_loss(logits, q, cfg.gamma, weight)
        return soft_f1_loss(logits, q)

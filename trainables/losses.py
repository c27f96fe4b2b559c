"""Losses: cross-entropy (label smoothing, class weights), focal (with label smoothing too) and soft macro F1.

`TaskLoss` applies the configured loss to each head of a model's output: one head for the single tasks and
`all`, three (mask, gender, age) summed for `multi`. A regressing age head (model.age_head: regress) always
takes `age_regression_loss` (smooth L1 on the scaled age); the loss section (name, label smoothing, gamma,
class weights) applies to the classifying heads only.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables import data
from trainables.config import LossConfig


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float, label_smoothing: float = 0.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) over a smoothed target: sum_c -q_c (1 - p_c)^gamma log p_c, mean over the batch."""
    n_classes = logits.shape[1]
    log_p = F.log_softmax(logits.float(), dim=1)
    q = F.one_hot(target, n_classes).float() * (1 - label_smoothing) + label_smoothing / n_classes
    per_class = -q * (1 - log_p.exp()).pow(gamma) * log_p
    if weight is not None:
        per_class = per_class * weight.view(1, -1)
    return per_class.sum(dim=1).mean()


def soft_f1_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - macro F1 computed on softmax probabilities (differentiable)."""
    p = F.softmax(logits.float(), dim=1)
    y = F.one_hot(target, logits.shape[1]).float()
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
        self.regress = [name == "age" and age_head == "regress" for name in layout]
        labels = train_labels.reshape(len(train_labels), -1)
        for i, n in enumerate(self.heads):
            balanced = cfg.class_weights == "balanced" and not self.regress[i]
            self.register_buffer(f"weight{i}", balanced_weights(labels[:, i], n) if balanced else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.reshape(len(target), -1)
        total = logits.new_zeros((), dtype=torch.float32)
        for i, part in enumerate(logits.split(self.heads, dim=1)):
            if self.regress[i]:
                total = total + age_regression_loss(part[:, 0], target[:, i])
            else:
                total = total + self._one(part, target[:, i], getattr(self, f"weight{i}"))
        return total

    def _one(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        cfg = self.cfg
        if cfg.name == "cross_entropy":
            return F.cross_entropy(logits.float(), target, weight=weight, label_smoothing=cfg.label_smoothing)
        if cfg.name == "focal":
            return focal_loss(logits, target, cfg.gamma, cfg.label_smoothing, weight)
        return soft_f1_loss(logits, target)

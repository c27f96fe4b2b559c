"""Optimizers (SGD, Adam, AdamW, SAM over one of them) and the learning-rate schedule.

SAM (Foret et al. 2021, "Sharpness-Aware Minimization") needs two forward/backward passes per step; the
training step in `loop.py` writes them out: `sam.ascend()` after the first backward moves the weights to
the worst case within radius rho, `sam.descend()` after the second restores them and steps the base
optimizer with the gradient taken there.

Weight decay goes to the weights of convolutions and linear layers only: biases, norm weights (every 1-D
parameter) and what the model names in its own `no_weight_decay()` (a ViT's position embedding) are not
decayed, as timm's training does (`timm.optim.param_groups_weight_decay`); `optimizer.decay_norm_and_bias`
decays everything.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from trainables.config import OptimizerConfig, ScheduleConfig


def param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict]:
    """The model's trainable parameters in groups of their weight decay (see the module's docstring) and, with
    cfg.layer_decay, of their layer's `lr_scale` (timm's param_groups_layer_decay, from the model's own
    group_matcher: the head 1, each block before it layer_decay times the next; 1-D parameters never decayed)."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay  # tune predict needs no timm.optim

    spare = not cfg.decay_norm_and_bias
    skip = model.no_weight_decay() if spare and hasattr(model, "no_weight_decay") else ()
    if cfg.layer_decay is not None:
        return param_groups_layer_decay(model, cfg.weight_decay, no_weight_decay_list=skip, layer_decay=cfg.layer_decay)
    return param_groups_weight_decay(model, cfg.weight_decay, weight_decay_exclude_1d=spare, no_weight_decay_list=skip)


def base_optimizer(name: str, params: Iterable[dict], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The optimizer over parameter groups that carry their own weight decay."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    return torch.optim.AdamW(params, lr=cfg.lr)


class SAM:
    """The weight perturbation of SAM around a base optimizer (which owns the parameters and their state)."""

    def __init__(self, optimizer: torch.optim.Optimizer, rho: float):
        self.optimizer, self.rho = optimizer, rho
        self._moves: list[tuple[torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def ascend(self) -> None:
        """w <- w + rho * g / ||g||, remembering the move."""
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        scale = self.rho / (norm + 1e-12)
        self._moves = [(p, p.grad * scale) for p in params]
        for p, e in self._moves:
            p.add_(e)

    @torch.no_grad()
    def descend(self) -> None:
        """Undo the move, then step the base optimizer with the gradient taken at the moved weights."""
        for p, e in self._moves:
            p.sub_(e)
        self._moves = []
        self.optimizer.step()


def make_optimizer(cfg: OptimizerConfig, model: nn.Module) -> tuple[torch.optim.Optimizer, SAM | None]:
    """The optimizer that owns the model's parameters, and the SAM wrapper when cfg.name is sam."""
    params = param_groups(model, cfg)
    if cfg.name == "sam":
        optimizer = base_optimizer(cfg.base, params, cfg)
        return optimizer, SAM(optimizer, cfg.rho)
    return base_optimizer(cfg.name, params, cfg), None


def lr_at(cfg: ScheduleConfig, base_lr: float, step: int, steps_per_epoch: int, epochs: int) -> float:
    """The learning rate of a (0-based) step: linear warm-up, then cosine to zero, step decay or constant."""
    epoch = step / steps_per_epoch
    if epoch < cfg.warmup_epochs:
        return base_lr * (step + 1) / (cfg.warmup_epochs * steps_per_epoch)
    if cfg.name == "cosine":
        span = max(epochs - cfg.warmup_epochs, 1e-9)
        return base_lr * 0.5 * (1 + math.cos(math.pi * min((epoch - cfg.warmup_epochs) / span, 1.0)))
    if cfg.name == "step":
        return base_lr * cfg.step_gamma ** int(epoch // cfg.step_epochs)
    return base_lr

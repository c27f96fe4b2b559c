"""Models: any timm backbone with a classifier sized for the task.

The multi-task model is one backbone whose classifier has 3 + 2 + 3 outputs: three linear heads (mask,
gender, age) on the same features, read back by splitting the output's columns; a regressing age head is
one column (3 + 2 + 1). `data.heads(task, age_head)` is the layout, `outputs.py` reads it back.
"""
from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from torch import nn

from trainables.config import ModelConfig, UserError


def check_backbone(cfg: ModelConfig) -> None:
    """Fail early, with one line, for a backbone timm does not know or a weights file that is not there."""
    if not timm.is_model(cfg.backbone):
        close = difflib.get_close_matches(cfg.backbone, timm.list_models(), n=3, cutoff=0.7)
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise UserError(f"unknown timm backbone {cfg.backbone!r}{hint}")
    if cfg.pretrained_file and not Path(cfg.pretrained_file).is_file():
        raise UserError(f"pretrained_file not found: {cfg.pretrained_file}")


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """timm's model with random, hub (pretrained) or local-file (pretrained_file) weights."""
    check_backbone(cfg)
    kwargs = dict(num_classes=num_classes, drop_rate=cfg.drop_rate)
    if cfg.pretrained_file:
        overlay = dict(file=str(Path(cfg.pretrained_file).resolve()))
        return timm.create_model(cfg.backbone, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    return timm.create_model(cfg.backbone, pretrained=cfg.pretrained, **kwargs)


def normalization(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and std the backbone expects (timm's data config), as tensors of 3."""
    data_cfg = timm.data.resolve_model_data_config(model)
    return torch.tensor(data_cfg["mean"]), torch.tensor(data_cfg["std"])

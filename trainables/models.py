"""Models: any timm backbone with a classifier sized for the task.

The multi-task model is one backbone whose classifier has 3 + 2 + 3 outputs: three linear heads (mask,
gender, age) on the same features, read back by splitting the output's columns; a regressing age head is
one column (3 + 2 + 1). `data.heads(task, age_head)` is the layout, `outputs.py` reads it back. Where the
pretrained weights come from is `weights.py`.
"""
from __future__ import annotations

import difflib

import timm
import torch
from torch import nn

from trainables import weights
from trainables.config import ModelConfig, UserError


def check_backbone(cfg: ModelConfig, download: bool = False) -> None:
    """Fail early, with one line, for a backbone timm does not know or weights that cannot be had or do not fit
    it. download: let timm's hub answer `pretrained: true` (the driver, before any trial)."""
    if not timm.is_model(cfg.backbone):
        close = difflib.get_close_matches(cfg.backbone, timm.list_models(), n=3, cutoff=0.7)
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise UserError(f"unknown timm backbone {cfg.backbone!r}{hint}")
    found = weights.resolve(cfg, download)
    if found is not None:
        weights.check_weights(cfg.backbone, found)


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """timm's model with random weights, or from the weights `cfg` asks for (`weights.resolve`: the file
    `cfg.pretrained_file` names, which a trial fills in for pretrained: true); its classifier, sized for
    `num_classes`, starts random."""
    if not timm.is_model(cfg.backbone):
        check_backbone(cfg)
    kwargs = dict(num_classes=num_classes, drop_rate=cfg.drop_rate)
    found = weights.resolve(cfg)
    if found is None:
        return timm.create_model(cfg.backbone, **kwargs)
    return timm.create_model(cfg.backbone, pretrained=True, pretrained_cfg_overlay=dict(file=str(found.file)),
                             **kwargs)


def normalization(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and std the backbone expects (timm's data config), as tensors of 3."""
    data_cfg = timm.data.resolve_model_data_config(model)
    return torch.tensor(data_cfg["mean"]), torch.tensor(data_cfg["std"])

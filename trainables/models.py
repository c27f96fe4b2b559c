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
    if cfg.frozen_layers:
        with torch.device("meta"):  # the layers' names and order, no weights made
            layer_groups(timm.create_model(cfg.backbone), cfg)


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """timm's model with random weights, or from the weights `cfg` asks for (`weights.resolve`: the file
    `cfg.pretrained_file` names, which a trial fills in for pretrained: true); its classifier, sized for
    `num_classes`, starts random."""
    if not timm.is_model(cfg.backbone):
        check_backbone(cfg)
    kwargs = dict(num_classes=num_classes, drop_rate=cfg.drop_rate)
    found = weights.resolve(cfg)
    if found is None:
        model = timm.create_model(cfg.backbone, **kwargs)
    else:
        model = timm.create_model(cfg.backbone, pretrained=True, pretrained_cfg_overlay=dict(file=str(found.file)),
                                  **kwargs)
    if cfg.frozen_layers:  # timm's freeze: no gradient, and each batch norm a FrozenBatchNorm2d (its statistics kept)
        from timm.utils.model import freeze

        freeze(model, [name for group in layer_groups(model, cfg)[:cfg.frozen_layers] for name in group])
    return model


def layer_groups(model: nn.Module, cfg: ModelConfig) -> list[list[str]]:
    """The backbone's layer groups before its classifier, in order, as timm groups them for layer-wise decay
    (`group_matcher(coarse=True)`: the stem, then each stage or block): the names of each group's modules.
    UserError where model.frozen_layers asks for more of them than there are."""
    from timm.models import group_modules

    try:
        matcher = model.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError):
        raise UserError(f"model.frozen_layers: timm does not group {cfg.backbone}'s layers (no group_matcher): "
                        "leave it at 0 for this backbone") from None
    classifier = next(name for name, module in model.named_modules() if module is model.get_classifier())
    groups = [[name for name in group if name != classifier and not name.startswith(classifier + ".")]
              for group in group_modules(model, matcher).values()]
    groups = [group for group in groups if group]
    if cfg.frozen_layers >= len(groups):
        raise UserError(f"model.frozen_layers {cfg.frozen_layers}: {cfg.backbone} has {len(groups)} layer groups, "
                        f"the last with its features for the classifier: freeze at most {len(groups) - 1}")
    return groups


def normalization(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and std the backbone expects (timm's data config), as tensors of 3."""
    data_cfg = timm.data.resolve_model_data_config(model)
    return torch.tensor(data_cfg["mean"]), torch.tensor(data_cfg["std"])

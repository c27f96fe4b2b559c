"""CutMix and MixUp of a training batch (timm's `Mixup`), the same for every head of the task.

timm's `Mixup` mixes a batch's images in place (each with the batch reversed: photo i with photo N-1-i,
by a weight drawn from Beta(alpha, alpha), or a box pasted in for CutMix) and returns the mixed one-hot
targets of one set of classes. To mix every head of `multi`, and a regressing age head's ages, with the
same pairs and weights, it is given each photo's place in the batch as its class: the targets it returns
are then the batch's mixing matrix M (M[i, j]: the share of photo j in mixed photo i), and M @ y mixes any
per-photo target. Label smoothing is folded into the one-hot targets before the mix, as timm does.
Validation and prediction never mix.
"""
from __future__ import annotations

import torch
from timm.data import Mixup

from trainables.config import AugmentConfig
from trainables.losses import smoothed_one_hot


class BatchMix:
    """Mixes a normalized batch and turns its labels (`data.targets`) into soft targets, one per head: (N, C)
    class probabilities for a classifying head (`heads[i]` classes), the mixed age for a regressing one (None)."""

    def __init__(self, cfg: AugmentConfig, heads: list[int | None], label_smoothing: float = 0.0):
        self.heads, self.label_smoothing = heads, label_smoothing
        self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                           switch_prob=cfg.mix_switch_prob, label_smoothing=0.0, num_classes=2)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        labels = labels.reshape(len(labels), -1)
        n = len(images)
        if n % 2:  # timm pairs the photos: an odd batch (a data set smaller than one batch) is left unmixed
            shares = torch.eye(n, device=images.device)
        else:
            self.mixup.num_classes = n
            images, shares = self.mixup(images, torch.arange(n, device=images.device))
        return images, [shares @ (labels[:, i].float() if classes is None else
                                  smoothed_one_hot(labels[:, i], classes, self.label_smoothing))
                        for i, classes in enumerate(self.heads)]


def batch_mix(cfg: AugmentConfig, heads: dict[str, int], regress_age: bool, label_smoothing: float
              ) -> BatchMix | None:
    """The batch mix of a trial's augment section (None when mixup and cutmix are off); heads: `data.heads`."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    classes = [None if name == "age" and regress_age else n for name, n in heads.items()]
    return BatchMix(cfg, classes, label_smoothing)

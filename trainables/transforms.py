"""Training augmentations (albumentations) on decoded uint8 photos, and normalization on the device.

The deterministic part of the pipeline (centre crop, resize to the model's input, or a little larger with
`augment.decode_margin`) happens once, when a photo is decoded (`data.load_image`, kept in `cache`);
evaluation uses only that part. Training adds the random part below,
built from `AugmentConfig` (a preset fills the parameters the config leaves unset).
"""
from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network

from typing import TYPE_CHECKING

import numpy as np
import torch

from trainables.config import AugmentConfig

if TYPE_CHECKING:  # albumentations takes a second to import: it is imported where a pipeline is built
    import albumentations as A


def train_transform(cfg: AugmentConfig, size: int, seed: int) -> A.Compose:
    """The random augmentations of a decoded photo (cfg.decoded_size(size) square), ending at size x size."""
    decoded = cfg.decoded_size(size)
    import albumentations as A

    ops: list[A.BasicTransform] = []
    if cfg.crop_scale < 1.0:
        ops.append(A.RandomResizedCrop(size=(size, size), scale=(cfg.crop_scale, 1.0), ratio=(0.8, 1.25)))
    elif decoded != size:
        ops.append(A.Resize(size, size))
    if cfg.hflip > 0:
        ops.append(A.HorizontalFlip(p=cfg.hflip))
    if cfg.color_jitter > 0:
        j = cfg.color_jitter
        ops.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=0.0, p=0.8))
    if cfg.grayscale > 0:
        ops.append(A.ToGray(p=cfg.grayscale))
    if cfg.sharpen > 0:
        ops.append(A.Sharpen(p=cfg.sharpen))
    if cfg.grid_dropout > 0:
        ops.append(A.GridDropout(ratio=0.3, p=cfg.grid_dropout))
    return A.Compose(ops, seed=seed)


def reseed(transform: A.Compose, seed: int) -> None:
    """Seed a pipeline so that each of its transforms draws from a stream of its own (albumentations seeds them
    all alike, so their draws would move in lockstep: no ToGray without a flip, Sharpen with GridDropout)."""
    transform.set_random_seed(seed)
    streams = np.random.SeedSequence(seed).generate_state(len(transform.transforms))
    for op, stream in zip(transform.transforms, streams, strict=True):
        op.set_random_seed(int(stream))


def eval_transform(cfg: AugmentConfig, size: int) -> A.Compose | None:
    """Evaluation: only the resize from the decoded size, when photos are decoded with a margin."""
    import albumentations as A

    return A.Compose([A.Resize(size, size)]) if cfg.decoded_size(size) != size else None


def normalize(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (N, H, W, 3) on the device -> normalized float (N, 3, H, W)."""
    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

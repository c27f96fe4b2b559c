"""Batches for training and evaluation, from the decoded-photo cache or from the image files.

`CachedPhotos` indexes the uint8 array of `cache.cached_images` (memory-mapped, shared by every trial on the
machine, never copied per trial); `DecodedPhotos` decodes each photo when it is drawn (`data.cache: false`,
and the baseline of `benchmarks/throughput.py`). Both apply the same random augmentations per sample
(training only) and return whole uint8 batches (`__getitems__`), which `transforms.normalize` turns into
float on the device.

`Batches` decides each epoch's batches in the main process: the order (shuffled, or one random photo of each
person with `one_image_per_person`, or drawn class-balanced with `data.sampler: balanced`) and one augmentation
seed per batch, all drawn from (seed, epoch). So an epoch's augmentations are the same whatever the number of
loader workers, in a resumed or re-run trial too, and the workers can stay alive from one epoch to the next
(`persistent_workers`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trainables.data import load_image
from trainables.transforms import reseed

if TYPE_CHECKING:
    import albumentations as A


class Photos(Dataset):
    """Photos with their labels, optionally augmented; subclasses say how photo i is read."""

    def __init__(self, labels: np.ndarray, transform: A.Compose | None = None):
        self.labels, self.transform = labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def image(self, i: int) -> np.ndarray:
        image = self.read(i)
        return image if self.transform is None else self.transform(image=image)["image"]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.array(self.image(i))), torch.as_tensor(self.labels[i])

    def __getitems__(self, batch: tuple[int, list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch (its augmentation seed, its indices): (B, H, W, 3) uint8 and the labels."""
        seed, batch = batch
        if self.transform is not None:
            reseed(self.transform, seed)
        images = np.stack([self.image(i) for i in batch])
        return torch.from_numpy(images), torch.as_tensor(self.labels[batch])


class CachedPhotos(Photos):
    """Photos `index` of a decoded uint8 array (N, S, S, 3), e.g. the memory-mapped cache."""

    def __init__(self, images: np.ndarray, index: np.ndarray, labels: np.ndarray, transform: A.Compose | None = None):
        super().__init__(labels, transform)
        self.images, self.index = images, index

    def read(self, i: int) -> np.ndarray:
        return self.images[self.index[i]]

    def __getitems__(self, batch: tuple[int, list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.transform is not None:
            return super().__getitems__(batch)
        index = batch[1]
        return torch.from_numpy(self.images[self.index[index]]), torch.as_tensor(self.labels[index])


class DecodedPhotos(Photos):
    """Photos decoded from their files each time they are drawn."""

    def __init__(self, files: list[str], size: int, center_crop: tuple[int, int] | None, labels: np.ndarray,
                 transform: A.Compose | None = None):
        super().__init__(labels, transform)
        self.files, self.size, self.center_crop = files, size, center_crop

    def read(self, i: int) -> np.ndarray:
        return load_image(self.files[i], self.size, self.center_crop)


def batch_as_is(batch):
    """The collate function: `__getitems__` already returns whole batches."""
    return batch


class Batches(Sampler[tuple[int, list[int]]]):
    """An epoch's batches as (augmentation seed, indices), drawn from (seed, epoch) alone.

    shuffle: a random order each epoch; persons: one random photo of each person per epoch instead of every
    photo; classes: draw with replacement, each photo weighted by one over its class's count, so that every
    class comes about equally often (with persons: a person by the sum of their photos' weights, then one of
    their photos by its weight: the same share of each photo, one person a draw); the epoch keeps its length
    (photos, or persons). drop_last: drop a last partial batch (training), unless it would be the only one.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = False,
                 persons: np.ndarray | None = None, drop_last: bool = False, classes: np.ndarray | None = None):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.groups = [np.flatnonzero(persons == p) for p in np.unique(persons)] if persons is not None else None
        self.weights = None
        if classes is not None:
            _, inverse, counts = np.unique(classes, return_inverse=True, return_counts=True)
            self.weights = 1.0 / counts[inverse]
        samples = len(self.groups) if self.groups is not None else n
        self.drop_last = drop_last and samples > batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, rng: np.random.Generator) -> np.ndarray:
        if self.weights is not None and self.groups is not None:
            shares = np.array([self.weights[g].sum() for g in self.groups])
            drawn = rng.choice(len(self.groups), size=len(self.groups), p=shares / shares.sum())
            return np.array([rng.choice(self.groups[k], p=self.weights[self.groups[k]] / shares[k]) for k in drawn],
                            dtype=np.int64)
        if self.weights is not None:
            return rng.choice(self.n, size=self.n, p=self.weights / self.weights.sum())
        if self.groups is not None:
            picks = np.array([rng.choice(g) for g in self.groups], dtype=np.int64)
            return picks[rng.permutation(len(picks))]
        return rng.permutation(self.n) if self.shuffle else np.arange(self.n)

    def __len__(self) -> int:
        samples = len(self.groups) if self.groups is not None else self.n
        return samples // self.batch_size if self.drop_last else -(-samples // self.batch_size)

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        order = self.order(rng)
        seeds = rng.integers(0, 2**32, size=len(self))
        for b in range(len(self)):
            yield int(seeds[b]), order[b * self.batch_size : (b + 1) * self.batch_size].tolist()


def loader(dataset: Photos, batches: Batches, workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=workers > 0, collate_fn=batch_as_is)


def train_loader(dataset: Photos, batch_size: int, seed: int, workers: int, persons: np.ndarray | None = None,
                 pin_memory: bool = False, classes: np.ndarray | None = None) -> DataLoader:
    """Shuffled batches (or one photo per person when `persons` is given; class-balanced draws when `classes`
    is: `Batches`); a last partial batch is dropped. Call `loader.batch_sampler.set_epoch(epoch)` before each
    epoch."""
    batches = Batches(len(dataset), batch_size, seed, shuffle=True, persons=persons, drop_last=True, classes=classes)
    return loader(dataset, batches, workers, pin_memory)


def eval_loader(dataset: Photos, batch_size: int, workers: int, pin_memory: bool = False) -> DataLoader:
    """Every photo once, in order."""
    return loader(dataset, Batches(len(dataset), batch_size), workers, pin_memory)

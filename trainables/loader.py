"""Batches for training and evaluation, from the decoded-photo cache or from the image files.

`CachedPhotos` indexes the uint8 array of `cache.cached_images` (memory-mapped, shared by every trial on the
machine, never copied per trial); `DecodedPhotos` decodes each photo when it is drawn (`data.cache: false`,
and the baseline of `benchmarks/throughput.py`). Both apply the same random augmentations per sample
(training only) and return whole uint8 batches (`__getitems__`), which `transforms.normalize` turns into
float on the device. With `one_image_per_person`, each epoch draws one random photo of each training person.
"""
from __future__ import annotations

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trainables.data import load_image


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

    def __getitems__(self, batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch at once: (B, H, W, 3) uint8 and the labels."""
        images = np.stack([self.image(i) for i in batch])
        return torch.from_numpy(images), torch.as_tensor(self.labels[batch])


class CachedPhotos(Photos):
    """Photos `index` of a decoded uint8 array (N, S, S, 3), e.g. the memory-mapped cache."""

    def __init__(self, images: np.ndarray, index: np.ndarray, labels: np.ndarray, transform: A.Compose | None = None):
        super().__init__(labels, transform)
        self.images, self.index = images, index

    def read(self, i: int) -> np.ndarray:
        return self.images[self.index[i]]

    def __getitems__(self, batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.transform is not None:
            return super().__getitems__(batch)
        return torch.from_numpy(self.images[self.index[batch]]), torch.as_tensor(self.labels[batch])


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


class OnePerPerson(Sampler[int]):
    """Each epoch, one random photo of every person, in random order; seeded by (seed, epoch)."""

    def __init__(self, persons: np.ndarray, seed: int):
        self.groups = [np.flatnonzero(persons == p) for p in np.unique(persons)]
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        picks = [int(rng.choice(g)) for g in self.groups]
        return iter([picks[i] for i in rng.permutation(len(picks))])


def train_loader(dataset: Photos, batch_size: int, seed: int, workers: int,
                 persons: np.ndarray | None = None, pin_memory: bool = False) -> DataLoader:
    """Shuffled batches (or one photo per person when `persons` is given); the last partial batch is dropped."""
    sampler = OnePerPerson(persons, seed) if persons is not None else None
    generator = torch.Generator().manual_seed(seed)
    samples = len(sampler) if sampler is not None else len(dataset)
    return DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                      generator=generator, num_workers=workers, pin_memory=pin_memory,
                      drop_last=samples > batch_size, worker_init_fn=seed_worker, collate_fn=batch_as_is)


def seed_worker(worker_id: int) -> None:
    """Each loader worker draws its own augmentations, seeded from the loader's generator (so by the epoch)."""
    info = torch.utils.data.get_worker_info()
    if info.dataset.transform is not None:
        info.dataset.transform.set_random_seed(info.seed % 2**32)


def eval_loader(dataset: Photos, batch_size: int, workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                      collate_fn=batch_as_is)

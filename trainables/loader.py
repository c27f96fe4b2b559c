"""Batches for training and evaluation from decoded photos held in memory.

Photos are decoded once per trial into a uint8 array; the loader applies the random augmentations per
sample (training only) and yields uint8 batches, which `transforms.normalize` turns into float on the
device. With `one_image_per_person`, each epoch draws one random photo of each training person.
"""
from __future__ import annotations

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class PhotoDataset(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: A.Compose | None = None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i]
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        return torch.from_numpy(np.ascontiguousarray(image)), torch.as_tensor(self.labels[i])


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


def train_loader(dataset: PhotoDataset, batch_size: int, seed: int, workers: int,
                 persons: np.ndarray | None = None, pin_memory: bool = False) -> DataLoader:
    """Shuffled batches (or one photo per person when `persons` is given); the last partial batch is dropped."""
    sampler = OnePerPerson(persons, seed) if persons is not None else None
    generator = torch.Generator().manual_seed(seed)
    samples = len(sampler) if sampler is not None else len(dataset)
    return DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                      generator=generator, num_workers=workers, pin_memory=pin_memory,
                      drop_last=samples > batch_size, worker_init_fn=seed_worker)


def seed_worker(worker_id: int) -> None:
    """Each loader worker draws its own augmentations, seeded from the loader's generator (so by the epoch)."""
    info = torch.utils.data.get_worker_info()
    if info.dataset.transform is not None:
        info.dataset.transform.set_random_seed(info.seed % 2**32)


def eval_loader(dataset: PhotoDataset, batch_size: int, workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory)

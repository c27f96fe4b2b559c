"""One epoch of training and a pass of prediction: plain functions, no Ray, no MLflow."""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from trainables.config import UserError
from trainables.optim import SAM
from trainables.transforms import normalize


def pick_device(name: str) -> str:
    """"auto": the GPU where there is one, else the CPU; UserError for "cuda" without one."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda asked for, but no CUDA GPU is visible")
    return "cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name)


class Device:
    """Where a trial runs and how: bf16 autocast on a GPU, fp32 on the CPU; channels_last on both (on the CPU too:
    oneDNN's convolutions, the depthwise ones above all, run faster on it: benchmarks/channels_last.py)."""

    def __init__(self, name: str, mean: torch.Tensor, std: torch.Tensor, channels_last: bool = True):
        self.device = torch.device(name)
        self.cuda = self.device.type == "cuda"
        self.channels_last = channels_last
        self.mean, self.std = mean.to(self.device), std.to(self.device)

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images.to(self.device, non_blocking=True), self.mean, self.std, self.channels_last)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()


def train_epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                sam: SAM | None, lr_of_step: Callable[[int], float], first_step: int, dev: Device,
                max_steps: int | None = None, step_ends: list[float] | None = None, mix: Callable | None = None,
                before_step: Callable[[int], None] | None = None, after_step: Callable[[int], None] | None = None
                ) -> tuple[float, int, float, float]:
    """Train for one pass over the loader (or its first `max_steps` batches); returns (mean loss, steps taken,
    seconds to the end of the first step, loader start included, seconds spent waiting on the loader after it).
    `step_ends` gets the time.perf_counter() at the end of each step. mix: CutMix/MixUp of the normalized batch
    (`mixing.BatchMix`); before_step: called with the step's (0-based) number before it, after the model is set
    to train (the head warm-up's freezing); after_step: called with the step's number after each optimizer step
    (the EMA's update). Each parameter group's lr is lr_of_step's times its own `lr_scale` (layer-wise decay), if
    it has one. Raises on a NaN or infinite loss."""
    model.train()
    total, steps, first_step_s, wait_s, start = 0.0, 0, 0.0, 0.0, time.perf_counter()
    step_end = start
    for images, labels in loader:
        if steps:  # the first batch's wait is the loader's start, in first_step_s
            wait_s += time.perf_counter() - step_end
        lr = lr_of_step(first_step + steps)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        if before_step is not None:
            before_step(first_step + steps)
        x, y = dev.batch(images), labels.to(dev.device, non_blocking=True)
        if mix is not None:
            x, y = mix(x, y)
        with dev.autocast():
            loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {first_step + steps}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if sam is None:
            optimizer.step()
        else:  # SAM: a second forward/backward at the worst-case weights nearby
            sam.ascend()
            optimizer.zero_grad(set_to_none=True)
            with dev.autocast():
                loss_fn(model(x), y).backward()
            sam.descend()
        if after_step is not None:
            after_step(first_step + steps + 1)
        total += loss.item()
        steps += 1
        if steps == 1:
            first_step_s = time.perf_counter() - start
        step_end = time.perf_counter()
        if step_ends is not None:
            step_ends.append(step_end)
        if steps == max_steps:
            break
    return total / max(steps, 1), steps, first_step_s, wait_s


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, dev: Device, loss_fn: nn.Module | None = None,
            flip: bool = False, progress: bool = False, max_batches: int | None = None,
            batch_ends: list[float] | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Outputs (float32) and labels of every sample in loader order (or of its first `max_batches`), and the
    mean loss when loss_fn is given. flip: average the outputs of each photo and its mirror image (test-time
    augmentation). `batch_ends` gets the time.perf_counter() at the end of each batch."""
    model.eval()
    outputs, labels, loss_sum = [], [], 0.0
    for images, y in tqdm(loader, desc="predicting", unit="batch", disable=None if progress else True, mininterval=2.0):
        x = dev.batch(images)
        with dev.autocast():
            logits = model(x).float()
            if flip:
                logits = (logits + model(x.flip(3)).float()) / 2
        if loss_fn is not None:
            loss_sum += loss_fn(logits, y.to(dev.device)).item() * len(y)
        outputs.append(logits.cpu().numpy())
        labels.append(y.numpy())
        if batch_ends is not None:
            batch_ends.append(time.perf_counter())
        if len(outputs) == max_batches:
            break
    n = sum(len(y) for y in labels)
    return np.concatenate(outputs), np.concatenate(labels), loss_sum / max(n, 1)

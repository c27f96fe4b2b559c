"""One training run from a `TrialConfig`: data, model, optimizer, then one epoch at a time.

`Trial` knows nothing of Ray or MLflow: `trainable.py` drives it inside a Ray Tune trial, and the export
reloads what `save` wrote. A checkpoint folder holds

    model.safetensors   the weights that are scored and exported (no pickle): with train.ema, their average
    trained.safetensors with train.ema: the trained weights the average follows (a resume goes on from them)
    tail.safetensors    with train.average_last: the running sum of the scored weights over the schedule's last epochs
    trainer.pt          optimizer state and step count (tensors only; loaded with weights_only)
    config.json         the trial's full resolved config
    metrics.json        the metrics of the epoch it was taken after
"""
from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from timm.utils import ModelEmaV3
from torch import nn

from trainables import cache, data, memory, metrics, weights
from trainables.config import TrialConfig
from trainables.loader import CachedPhotos, DecodedPhotos, Photos, eval_loader, train_loader
from trainables.loop import Device, pick_device, predict, train_epoch
from trainables.losses import TaskLoss
from trainables.mixing import batch_mix
from trainables.models import build_model, normalization
from trainables.optim import lr_at, make_optimizer
from trainables.transforms import eval_transform, train_transform

MARGIN = 1.1  # a re-plan judges the epochs to come this much slower than the slowest so far


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def median_step(ends: list[float]) -> float:
    """The median of the seconds between consecutive step ends."""
    return statistics.median(b - a for a, b in zip(ends, ends[1:], strict=False))


class Trial:
    """A model being trained on the person split of `cfg.data`, one `run_epoch()` at a time."""

    def __init__(self, cfg: TrialConfig, cpus: int = 1, gpu_share: float = 1.0, progress: bool = False,
                 split: tuple[list[str], list[str]] | None = None):
        """cpus: the CPUs this trial may use (threads, loader workers); gpu_share: its part of the GPU's memory;
        split: (train, validation) persons instead of the seeded split of cfg.data (no validation: [])."""
        cfg.model = weights.with_weights(cfg.model)  # the file it starts from and its hash, in its config
        self.cfg = cfg
        self.planned = cfg.train.epochs  # the schedule as planned: a re-plan shortens it, and may grow it back
        self.slowest = 0.0  # the slowest epoch so far (wall seconds), for `replan`
        started = time.perf_counter()
        memory.keep_freed_memory()  # every step's activations reused, not faulted in again
        seed_everything(cfg.train.seed)
        device = pick_device(cfg.train.device)
        if device == "cpu":
            torch.set_num_threads(max(1, cpus))
        elif 0 < gpu_share < 1:  # several trials share the GPU: each keeps to its part (contexts need the rest)
            torch.cuda.set_per_process_memory_fraction(0.95 * gpu_share)
        workers = cfg.train.num_workers if cfg.train.num_workers is not None else max(0, cpus - 1)

        table = data.read_table(cfg.data.root, cfg.data.max_persons)
        self.train_persons, self.val_persons = split or data.split_persons(table, cfg.data)
        table = table[table["person"].isin(set(self.train_persons) | set(self.val_persons))]
        size, crop = cfg.model.image_size, cfg.augment.center_crop
        files, decoded = table["file"].tolist(), cfg.augment.decoded_size(size)
        images = None
        if cfg.data.cache:
            images = cache.cached_images(files, decoded, crop, cache.cache_dir(cfg.data.cache_dir), cfg.data.root,
                                         workers=max(1, cpus), progress=progress)
        labels = data.targets(table, cfg.task, cfg.data.age_bounds, cfg.model.age_head)  # what the model learns
        is_train = table["person"].isin(self.train_persons).to_numpy()
        self.train_labels = labels[is_train]
        val_rows = table[~is_train]  # scored in the competition's classes, in the validation loader's order
        self.val_labels = labels[~is_train]
        self.val_truth = data.targets(val_rows, cfg.task, cfg.data.score_age_bounds)
        self.val_ages = val_rows["age"].to_numpy()
        data_ready = time.perf_counter()

        self.model = build_model(cfg.model, data.num_outputs(cfg.task, cfg.model.age_head))
        self.dev = Device(device, *normalization(self.model), channels_last=cfg.model.channels_last)
        self.model.to(self.dev.device)
        if self.dev.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if cfg.model.compile else self.model
        self.loss_fn = TaskLoss(cfg.loss, cfg.task, self.train_labels, cfg.model.age_head).to(self.dev.device)
        self.optimizer, self.sam = make_optimizer(cfg.optimizer, self.model)
        head = {id(p) for p in self.model.get_classifier().parameters()}  # with train.head_warmup: what trains first
        self.backbone = [p for p in self.model.parameters() if id(p) not in head and p.requires_grad]
        self.backbone_norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                               and not any(id(p) in head for p in m.parameters(recurse=False))]
        self.mix = batch_mix(cfg.augment, data.heads(cfg.task, cfg.model.age_head), cfg.model.age_head == "regress",
                             self.loss_fn.smoothing)
        # with train.ema, the average of the weights is the model: validated, saved as model.safetensors, exported
        self.ema = ModelEmaV3(self.model, decay=cfg.train.ema, use_warmup=True) if cfg.train.ema else None
        self.scored_model = self.ema.module if self.ema is not None else self.model
        self.scored = self.ema.module if self.ema is not None else self.forward

        def photos(index: np.ndarray, transform) -> Photos:
            if images is not None:
                return CachedPhotos(images, index, labels[index], transform)
            return DecodedPhotos([files[i] for i in index], decoded, crop, labels[index], transform)

        pin = self.dev.cuda
        train_set = photos(np.flatnonzero(is_train), train_transform(cfg.augment, size, cfg.train.seed))
        persons = table["person"].to_numpy()[is_train] if cfg.data.one_image_per_person else None
        balanced = cfg.data.sampler == "balanced"
        classes = data.sampling_classes(table[is_train], cfg.task, cfg.data.age_bounds) if balanced else None
        self.train_loader = train_loader(train_set, cfg.train.batch_size, cfg.train.seed, workers, persons, pin,
                                         classes)
        self.val_loader = eval_loader(photos(np.flatnonzero(~is_train), eval_transform(cfg.augment, size)),
                                      cfg.train.batch_size, workers, pin)
        self.epoch, self.step = 0, 0
        self.warmup_steps = round(cfg.train.head_warmup_epochs() * len(self.train_loader))
        self.frozen = False  # the backbone, during train.head_warmup
        self.tail: dict[str, torch.Tensor] = {}  # with train.average_last: the sum of the last epochs' weights
        self.tail_epochs = 0  # how many epochs that sum holds
        self.val_s = 0.0  # the last validation pass's seconds (the average's pass is reserved in a re-plan)
        self.startup = {"startup_data_s": data_ready - started, "startup_model_s": time.perf_counter() - data_ready}

    def lr(self, step: int) -> float:
        cfg = self.cfg
        return lr_at(cfg.schedule, cfg.optimizer.lr, step, len(self.train_loader), cfg.train.epochs)

    def run_epoch(self) -> dict:
        """Train one epoch, then score the validation persons. Returns this epoch's metrics."""
        start = time.perf_counter()
        self.train_loader.batch_sampler.set_epoch(self.epoch)  # the epoch's batches depend on its number alone
        lr = self.lr(self.step)
        if self.mix is not None:  # timm's Mixup draws from numpy's generator: each epoch's mixes from (seed, epoch)
            np.random.seed([self.cfg.train.seed, self.epoch])
        train_loss, steps, first_step_s, wait_s = train_epoch(
            self.forward, self.train_loader, self.loss_fn, self.optimizer, self.sam, self.lr, self.step, self.dev,
            mix=self.mix, before_step=self.freeze, after_step=self.average)
        self.step += steps
        self.epoch += 1
        trained = time.perf_counter()
        result = self.evaluate()
        ended = time.perf_counter()
        # where the epoch's seconds went: training (of which waiting on the loader's next batch) and validation
        result.update(epoch=self.epoch, planned_epochs=self.cfg.train.epochs, train_loss=train_loss, lr=lr,
                      epoch_time_s=ended - start, train_s=trained - start, loader_wait_s=wait_s,
                      val_s=ended - trained)
        if self.dev.cuda:  # what this trial holds of the GPU (trials sharing one keep to their part)
            result["gpu_memory_peak_mb"] = torch.cuda.max_memory_allocated(self.dev.device) / 2**20
        if self.startup:  # the first epoch of this process: where its start-up time went
            result.update(self.startup, first_step_s=first_step_s)
            self.startup = {}
        return result

    def measure_pace(self, steps: int = 6) -> dict:
        """What an epoch of this trial costs here, from a few timed steps of one pass (after two untimed ones:
        the loader's start and the first steps' one-off work), and likewise for validation: {"epoch_s": training
        and validation, "train_step_s", "val_batch_s", "first_step_s", "head_step_s": a step of the head's
        warm-up, "head_warmup_saving_s": what an epoch of it saves}. The steps train the model: measure on a
        trial that is thrown away."""
        warm, steps = 2, max(1, min(steps, len(self.train_loader) - 2))
        ends: list[float] = []
        _, _, first, _ = train_epoch(self.forward, self.train_loader, self.loss_fn, self.optimizer, self.sam,
                                     self.lr, 0, self.dev, max_steps=warm + steps, step_ends=ends, mix=self.mix,
                                     after_step=self.average)
        # the median step: one slow step (the machine busy for a moment) does not make the epoch
        train_step = median_step(ends[warm - 1:]) if len(ends) > warm else first
        head_step = train_step
        if self.cfg.train.head_warmup:  # the head's warm-up: steps with the backbone frozen, for its first epochs
            ends = []
            train_epoch(self.forward, self.train_loader, self.loss_fn, self.optimizer, self.sam, self.lr, 0, self.dev,
                        max_steps=1 + steps // 2, step_ends=ends, mix=self.mix,
                        before_step=lambda _: self.freeze_backbone(True), after_step=self.average)
            self.freeze_backbone(False)
            if len(ends) > 1:
                head_step = median_step(ends)
        val_batch = 0.0
        if self.val_persons:
            ends = []
            started = time.perf_counter()
            predict(self.scored, self.val_loader, self.dev, self.loss_fn, max_batches=4, batch_ends=ends)
            val_batch = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else ends[0] - started
        epoch = train_step * len(self.train_loader) + val_batch * (len(self.val_loader) if self.val_persons else 0)
        # an epoch of the head's warm-up costs this much less (its frozen backbone needs no backward pass)
        saving = max(0.0, train_step - head_step) * len(self.train_loader)
        return {"epoch_s": epoch, "train_step_s": train_step, "val_batch_s": val_batch,
                "first_step_s": first, "head_step_s": head_step, "head_warmup_saving_s": saving}

    def replan(self, end_by: float, epoch_s: float, margin: float = MARGIN, now: float | None = None) -> int | None:
        """After an epoch that took `epoch_s` wall seconds: fit the schedule to end by `end_by` (time.time(), or
        `now`'s clock) as if every epoch to come were as slow as the slowest so far, times `margin`. Returns the
        new length, or None when it is unchanged (`fit_schedule`)."""
        self.slowest = max(self.slowest, epoch_s)
        return self.fit_schedule(end_by, self.slowest * margin, now)

    def fit_schedule(self, end_by: float, epoch_s: float, now: float | None = None) -> int | None:
        """Set the schedule (train.epochs) to the most epochs that end by `end_by` (time.time(), or `now`'s
        clock) at `epoch_s` seconds an epoch: shorter when the schedule would end later; longer again, up to the
        length it was planned with, when the epochs since ran faster than that pace and at most two thirds of
        the schedule are done (later, a longer cosine would raise a learning rate it has nearly spent). When not
        one more epoch fits, the schedule ends now: a trial the budget would cut mid-epoch leaves no model, one
        that ends here leaves this epoch's. Returns the new length, or None when it is unchanged. The learning
        rate follows the new length from the next step on, so it still ends at the trial's last epoch."""
        end_by -= self.end_reserve_s
        fits = self.epoch + int((end_by - (time.time() if now is None else now)) / max(epoch_s, 1e-9))
        current = self.cfg.train.epochs
        longest = max(current, self.planned) if 3 * self.epoch <= 2 * current else current
        epochs = max(self.epoch, min(fits, longest))
        if epochs != current:
            self.cfg.train.epochs = epochs
            return epochs
        return None

    def freeze(self, step: int) -> None:
        """Before training step `step` (0-based, over the whole schedule), with train.head_warmup: during the
        warm-up the backbone is frozen (no gradient, so the optimizer leaves it as it is; batch norms in eval
        mode, so their statistics stay too) and the new classifier trains alone; at its end, all of it trains."""
        frozen = step < self.warmup_steps
        if frozen or self.frozen:  # each step of the warm-up (model.train() sets every norm training), then once
            self.freeze_backbone(frozen)

    def freeze_backbone(self, frozen: bool) -> None:
        for p in self.backbone:
            p.requires_grad_(not frozen)
        for m in self.backbone_norms:
            m.train(not frozen)
        self.frozen = frozen

    def average(self, step: int) -> None:
        """After optimizer step `step` (1-based, counted over the whole schedule): the EMA's update, if on."""
        if self.ema is not None:
            self.ema.update(self.model, step=step)

    @property
    def end_reserve_s(self) -> float:
        """Seconds the schedule's end needs besides its epochs: with train.average_last, the average's validation."""
        return self.val_s if self.cfg.train.average_last else 0.0

    def end_epoch(self, result: dict) -> dict:
        """After an epoch and its re-plan, with train.average_last N: the scored weights join the running sum
        while the epoch is one of the schedule's last N; at the schedule's end, the mean of those epochs'
        weights (and batch-norm statistics) is scored on the validation persons and, if its val_f1 is higher,
        becomes the model (the result is then its scores, with `averaged_epochs`). Either way the result gets
        `average_val_f1`, and `last_epoch_val_f1` the last epoch's own. Returns the result the epoch ends with."""
        n = self.cfg.train.average_last
        if not n or not self.val_persons:
            return result
        if self.epoch <= self.cfg.train.epochs - n:  # not yet in the tail (or a re-plan lengthened the schedule)
            self.tail, self.tail_epochs = {}, 0
            return result
        for key, value in self.scored_model.state_dict().items():
            if value.is_floating_point():
                self.tail[key] = self.tail[key] + value.detach() if key in self.tail else value.detach().clone()
        self.tail_epochs += 1
        if self.epoch < self.cfg.train.epochs or self.tail_epochs < 2:
            return result
        last = {key: value.clone() for key, value in self.scored_model.state_dict().items()}
        last_outputs = self.val_outputs
        self.scored_model.load_state_dict({**last, **{k: v / self.tail_epochs for k, v in self.tail.items()}})
        averaged = self.evaluate()
        scores = {"average_val_f1": averaged["val_f1"], "last_epoch_val_f1": result["val_f1"]}
        if averaged["val_f1"] > result["val_f1"]:
            return {**result, **averaged, **scores, "averaged_epochs": self.tail_epochs}
        self.scored_model.load_state_dict(last)
        self.val_outputs = last_outputs
        return {**result, **scores, "averaged_epochs": 0}

    def evaluate(self) -> dict:
        """val_f1 (and the other scores) and val_loss on the validation persons (none: {})."""
        if not self.val_persons:
            return {}
        started = time.perf_counter()
        outputs, labels, val_loss = predict(self.scored, self.val_loader, self.dev, self.loss_fn)
        self.val_s = time.perf_counter() - started
        self.val_outputs = outputs  # for out-of-fold scores
        if not np.array_equal(labels, self.val_labels):  # the truth below is paired with the outputs by position
            raise RuntimeError("the validation loader did not keep the validation photos in the table's order")
        return {**metrics.score(self.cfg, outputs, self.val_truth, self.val_ages), "val_loss": val_loss}

    def save(self, folder: str | Path, result: dict) -> None:
        folder = Path(folder)
        save_model(self.scored_model, str(folder / "model.safetensors"))
        if self.ema is not None:
            save_model(self.model, str(folder / "trained.safetensors"))
        if self.tail:
            save_file({k: v.contiguous() for k, v in self.tail.items()}, str(folder / "tail.safetensors"))
        torch.save({"optimizer": self.optimizer.state_dict(), "epoch": self.epoch, "step": self.step,
                    "epochs": self.cfg.train.epochs, "tail_epochs": self.tail_epochs}, folder / "trainer.pt")
        (folder / "config.json").write_text(json.dumps(self.cfg.model_dump(mode="json"), indent=1))
        (folder / "metrics.json").write_text(json.dumps(result, indent=1))
        if getattr(self, "val_outputs", None) is not None:  # this epoch's validation outputs: for ensembles
            np.save(folder / "val_outputs.npy", self.val_outputs.astype(np.float32))

    def load(self, folder: str | Path) -> None:
        folder = Path(folder)
        load_model(self.scored_model, str(folder / "model.safetensors"), device=str(self.dev.device))
        if self.ema is not None:
            load_model(self.model, str(folder / "trained.safetensors"), device=str(self.dev.device))
        state = torch.load(folder / "trainer.pt", map_location=self.dev.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.tail_epochs = state.get("tail_epochs", 0)
        if self.tail_epochs:
            self.tail = load_file(str(folder / "tail.safetensors"), device=str(self.dev.device))
        self.cfg.train.epochs = state.get("epochs", self.cfg.train.epochs)  # a schedule the time budget shortened

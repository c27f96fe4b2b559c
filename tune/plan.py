"""How a study, or one training, spends a time budget: planned from the pace measured on this machine.

Before the first trial, a throw-away `Trial` of the study's fixed values (its prior) times a few of its training
steps and validation batches on the trial's resources (`Trial.measure_pace`): what an epoch costs here, what
a trial's start costs, and with train.head_warmup what its steps with the backbone frozen save (lite0 at 112 px
on 2 cores: 0.18 s a step against 1.07 s); once Ray runs, a process of the trial's resources times what Ray adds to it
(`tune.search.ray_setup.TrialStart`: its worker's start and imports, under the machine's load then). From these and the
seconds left:

- trials at once: as the resources allow (and search.max_concurrent);
- a trial's length (train.epochs, and ASHA's max_t): the longest schedule that lets the study finish
  at least two full trials (one per slot when two or more run at once, two one after the other otherwise), so
  a longer budget buys longer trials, and a slower machine shorter ones; up to search.max_epochs, past which a
  longer budget buys more trials one after the other on each slot, of equal length (not a short remainder);
- where that is shorter than search.min_epochs and the trials run on CPUs, a single trial, the prior, on
  all of this machine's CPUs, as long as the budget allows (its pace is measured first: where even it cannot
  give trials search.min_epochs, a trial on fewer CPUs cannot either, and its pace is not measured at all);
  a layout or size is judged by whether its trials get search.min_epochs even 10% slower than measured, as a
  running trial judges its epochs to come (`keeps`);
- ASHA's first rung (grace_period) stays below the trial's length;
- with search.image_sizes, the photos' size: the largest at which the trials still get search.min_epochs epochs
  in that layout, so that a longer budget buys larger photos before longer trials (pretrained trials peak within
  a few epochs; finer detail is what the age band lacks). The smallest size's pace is measured; from it, scaled
  by the pixels, the largest size that looks as if it fits is measured too and taken if it does, else the next
  smaller one (judged from the pace just measured), so that a list of many sizes costs one or two measurements.

Nothing here is a constant pace: a plan made on a slow host plans fewer epochs. What the measurement cannot
see (trials sharing the machine slow each other; a sampled model slower than the prior) is corrected while
the study runs: the searcher plans new trials from the slowest pace reported, and a running trial re-plans its
own schedule after each epoch at its slowest epoch so far: shorter when it would end after the budget, longer
again (up to its plan, early in it) when faster epochs since left time over (`Trial.replan`).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainables import cache, data, memory
from trainables.config import TrialConfig, UserError
from trainables.trial import MARGIN, Trial

FULL_TRIALS = 2  # full-length trials the plan leaves room for (a choice of at least two finished models)


@dataclass
class Pace:
    """What a trial costs on `cpus` CPUs of this machine."""
    epoch_s: float  # one epoch: training and validation
    start_s: float  # the trial's start: data, model, the loader's first batch (and Ray's, where it was measured)
    cpus: float
    head_warmup_saving_s: float = 0.0  # what an epoch of the head's warm-up (train.head_warmup) costs less
    head_warmup: Callable[[int], float] = lambda epochs: 0.0  # its epochs in a schedule of `epochs`

    def warmup_saving_s(self, epochs: int) -> float:
        """What the head's warm-up saves a trial of `epochs` epochs."""
        return self.head_warmup(epochs) * self.head_warmup_saving_s

    def warmup_note(self, epochs: int) -> str:
        """What the head's warm-up saves a trial of `epochs` epochs, for the plan's line ("" when under a second)."""
        saved = self.warmup_saving_s(epochs)
        return f" ({saved:.0f} s less in all with the head's warm-up)" if saved >= 1 else ""

    def trial_s(self, epochs: int) -> float:
        """A trial of `epochs` epochs, its start included."""
        return self.start_s + epochs * self.epoch_s - self.warmup_saving_s(epochs)


@dataclass
class Plan:
    epochs: int  # a trial's schedule
    concurrent: int  # trials at once
    cpus_per_trial: float
    grace_period: int  # ASHA's first rung
    pace: Pace
    seconds: float  # the budget left when the plan was made
    note: str = ""  # why this layout
    image_size: int | None = None  # the photos' size, where the plan chose it (search.image_sizes)

    def describe(self) -> str:
        at_once = "1 trial at a time" if self.concurrent == 1 else f"{self.concurrent} trials at a time"
        pace = f"{self.pace.epoch_s:.1f}" if self.pace.epoch_s < 10 else f"{self.pace.epoch_s:.0f}"
        saved = self.pace.warmup_note(self.epochs)
        size = f" at {self.image_size} px" if self.image_size else ""
        return (f"plan: {pace} s an epoch{size} on {self.cpus_per_trial:g} CPU(s){saved}, {self.pace.start_s:.0f} s to "
                f"start a trial (measured), "
                f"{self.seconds:.0f} s left: trials of {self.epochs} epochs, {at_once}, first ASHA rung at "
                f"epoch {self.grace_period}{self.note}")

    def params(self) -> dict:
        return {"plan.epochs": self.epochs, "plan.concurrent": self.concurrent,
                "plan.cpus_per_trial": self.cpus_per_trial, "plan.grace_period": self.grace_period,
                "plan.epoch_s": round(self.pace.epoch_s, 2), "plan.start_s": round(self.pace.start_s, 2),
                **({"plan.image_size": self.image_size} if self.image_size else {})}


def measure(cfg: TrialConfig, cpus: float, steps: int = 6, split=None) -> Pace:
    """Time a few steps of `cfg`'s model, at its size and batch, on `cpus` threads of this process (on `split`,
    (train, validation) persons, when given). Photos not yet cached at its size are decoded first, on every
    CPU (nothing else runs yet), and not timed."""
    threads = torch.get_num_threads()
    try:
        if cfg.data.cache and split is None:  # the photos the trials will read, as `tune run`'s checks cache them
            files = data.read_table(cfg.data.root, cfg.data.max_persons)["file"].tolist()
            cache.cached_images(files, cfg.augment.decoded_size(cfg.model.image_size), cfg.augment.center_crop,
                                cache.cache_dir(cfg.data.cache_dir), cfg.data.root, workers=os.cpu_count() or 1,
                                progress=True)
        started = time.perf_counter()
        trial = Trial(cfg, cpus=max(1, int(cpus)), split=split)
        built = time.perf_counter() - started
        pace = trial.measure_pace(steps)
    finally:
        torch.set_num_threads(threads)
    del trial
    memory.release_freed_memory()  # the driver trains no more: what the steps kept goes back
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the trials need the GPU's memory
    return Pace(epoch_s=pace["epoch_s"], start_s=built + pace["first_step_s"], cpus=cpus,
                head_warmup_saving_s=pace["head_warmup_saving_s"], head_warmup=cfg.train.head_warmup_epochs)


class Measured:
    """`measure`, once per number of CPUs and image size: a plan made again (once Ray has started) reuses the
    paces."""

    def __init__(self):
        self.paces: dict[tuple[float, int], Pace] = {}

    def __call__(self, cfg: TrialConfig, cpus: float) -> Pace:
        key = (cpus, cfg.model.image_size)
        if key not in self.paces:
            self.paces[key] = measure(cfg, cpus)
        return self.paces[key]


def epochs_that_fit(seconds: float, pace: Pace, trials: int = 1) -> int:
    """The longest schedule of which `trials` trials, one after the other, end within `seconds` (below 1: none)."""
    epochs = math.floor((seconds / trials - pace.start_s) / pace.epoch_s)  # at the full pace
    while pace.trial_s(epochs + 1) <= seconds / trials:  # what the head's warm-up saves
        epochs += 1
    return epochs


def keeps(seconds: float, pace: Pace, epochs: int, trials: int = 1) -> bool:
    """Whether `trials` trials of `epochs` epochs, one after the other, still end within `seconds` when every epoch
    runs MARGIN slower than measured, as a running trial judges the epochs to come when it re-plans itself
    (`Trial.replan`): a layout or size chosen because its trials get search.min_epochs must not see them
    re-planned to fewer when the trials run a little slower than the measurement."""
    return epochs_that_fit(seconds, dataclasses.replace(pace, epoch_s=pace.epoch_s * MARGIN), trials) >= epochs


def plan_training(cfg: TrialConfig, seconds: float, cpus: int, split=None) -> tuple[int, Pace]:
    """`tune train --time-budget`: the longest schedule, up to cfg's train.epochs, that ends within `seconds`
    on `cpus` CPUs (on `split` when given), the measurement's own seconds (and any photos it decoded) spent
    first. Raises UserError when not one epoch fits."""
    started = time.time()
    pace = measure(cfg, cpus, split=split)
    seconds -= time.time() - started
    epochs = min(cfg.train.epochs, epochs_that_fit(seconds, pace))
    if epochs < 1:
        raise UserError(f"the time budget leaves {seconds:.0f} s, and one epoch of this model takes about "
                        f"{pace.trial_s(1) - pace.start_s:.0f} s here ({pace.start_s:.0f} s to start): give it at "
                        f"least {math.ceil(pace.trial_s(1) - seconds):.0f} s more (--time-budget)")
    return epochs, pace


def plan_study(study, seconds: float, cpus: float | None = None, measure_at=measure, gpus: float | None = None,
               ray_start_s: float = 0.0) -> Plan:
    """Plan `study` (a StudyConfig) for the `seconds` left of its budget on `cpus` CPUs and `gpus` GPUs (default:
    this machine's), when Ray takes `ray_start_s` to start a trial's process. Raises UserError when not one epoch
    of one trial fits (at the smallest of search.image_sizes)."""
    cpus = cpus or os.cpu_count() or 1
    gpus = torch.cuda.device_count() if gpus is None else gpus
    sizes = sorted(set(study.search.image_sizes or []))
    plan = plan_layout(study, seconds, cpus, gpus, measure_at, ray_start_s, sizes[0] if sizes else None)
    alone = plan.cpus_per_trial != study.resources.cpus_per_trial  # the prior alone, on every CPU
    per_slot = 1 if plan.concurrent >= FULL_TRIALS or alone else FULL_TRIALS
    pace, at = plan.pace, plan.image_size  # the pace last measured, and its size
    for size in reversed(sizes[1:]):  # the largest size at which the trials still get search.min_epochs
        scaled = dataclasses.replace(pace, epoch_s=pace.epoch_s * (size / at) ** 2)
        if not keeps(seconds, scaled, study.search.min_epochs, per_slot):
            continue  # not worth measuring: even at the pixels' pace it cannot fit
        larger = plan_layout(study, seconds, cpus, gpus, measure_at, ray_start_s, size, alone)
        if keeps(seconds, larger.pace, study.search.min_epochs, per_slot):
            return larger
        pace, at = larger.pace, size  # slower than the pixels said: the smaller sizes judged from it
    return plan


def plan_layout(study, seconds: float, cpus: float, gpus: float, measure_at, ray_start_s: float,
                image_size: int | None, alone: bool | None = None) -> Plan:
    """The plan at one image size (`image_size`; None: the study's model.image_size). `alone`: True, the prior
    alone on every CPU; False, the trials' own resources; None, whichever the budget calls for."""
    res, search = study.resources, study.search
    slots = max(1, int(cpus // res.cpus_per_trial))
    if res.gpus_per_trial > 0:
        slots = min(slots, max(1, int(gpus // res.gpus_per_trial)))
    concurrent = min(slots, search.max_concurrent or slots)
    prior = study.trial_defaults()
    if image_size:
        prior.model.image_size = image_size
    if res.gpus_per_trial == 0:  # Ray hides the GPUs from trials that ask for none
        prior.train.device = "cpu"
    def measured(cpus_per_trial: float) -> Pace:
        pace = measure_at(prior, cpus_per_trial)
        return dataclasses.replace(pace, start_s=pace.start_s + ray_start_s)

    per_slot = 1 if concurrent >= FULL_TRIALS else FULL_TRIALS
    cpus_per_trial, note = res.cpus_per_trial, ""
    can_go_alone = res.gpus_per_trial == 0 and res.cpus_per_trial < cpus <= (os.cpu_count() or 1)
    whole = measured(cpus) if alone or (alone is None and can_go_alone) else None  # the prior on the whole machine
    if alone is None and whole and not keeps(seconds, whole, search.min_epochs):  # not even one trial a slot:
        alone = True  # a trial on fewer CPUs is no faster: its pace need not be measured (a short budget's seconds)
    pace = None if alone else measured(res.cpus_per_trial)
    if pace is not None:
        epochs = epochs_that_fit(seconds, pace, per_slot)
        if not keeps(seconds, pace, search.min_epochs, per_slot) and per_slot > 1:
            epochs, per_slot = epochs_that_fit(seconds, pace, 1), 1
    if whole and (alone or (not keeps(seconds, pace, search.min_epochs, per_slot)
                            and epochs_that_fit(seconds, whole, 1) > epochs)):
        pace, cpus_per_trial, concurrent, per_slot = whole, cpus, 1, 1  # the budget holds barely one trial
        epochs = epochs_that_fit(seconds, whole, 1)
        note = (f"; the budget holds barely one trial of {search.min_epochs}+ epochs (search.min_epochs): "
                "the study's fixed values alone, on every CPU")
    if search.max_epochs and epochs > search.max_epochs:  # the budget holds longer trials than the study wants:
        while epochs > search.max_epochs and epochs_that_fit(seconds, pace, per_slot + 1) >= 1:
            per_slot += 1  # more of them, one after the other, each as long as an equal share allows
            epochs = epochs_that_fit(seconds, pace, per_slot)
        epochs = min(epochs, search.max_epochs)
        note += f"; {per_slot} trials one after the other on each slot (search.max_epochs: {search.max_epochs})"
    if epochs < 1:
        raise UserError(f"the time budget leaves {seconds:.0f} s after the checks, and one epoch of the study's "
                        f"model takes about {pace.trial_s(1) - pace.start_s:.0f} s here ({pace.start_s:.0f} s to "
                        f"start a trial): give it at least {math.ceil(pace.trial_s(1) - seconds):.0f} s more "
                        "(--time-budget)")
    grace = max(1, min(study.scheduler.grace_period, epochs - 1))
    return Plan(epochs, concurrent, cpus_per_trial, grace, pace, seconds, note, image_size)


def apply(plan: Plan, study) -> None:
    """Set the plan in the study's config: what every trial, the scheduler and the searcher read."""
    apply_params(plan.params(), study)


def apply_params(params: dict, study) -> bool:
    """Set a plan given as its `plan.*` params (as its study's parent run keeps them: a resumed study's trials
    and rounds keep the plan it was run with). False when `params` hold none."""
    if "plan.epochs" not in params:
        return False
    epochs = int(params["plan.epochs"])
    study.scheduler.max_t = epochs
    study.scheduler.grace_period = int(params["plan.grace_period"])
    study.train = study.train.model_copy(update={"epochs": epochs})  # set, so that the trials get it
    study.resources.cpus_per_trial = float(params["plan.cpus_per_trial"])
    study.search.max_concurrent = int(params["plan.concurrent"])
    if "plan.image_size" in params:
        study.model = study.model.model_copy(update={"image_size": int(params["plan.image_size"])})
    return True

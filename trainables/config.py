"""The configuration of one trial, with every default in one place.

A trial's config is a plain nested dict (what Ray passes around); `TrialConfig` validates it and fills the
defaults. The study config (`tune/config.py`) extends this model, so a study YAML and an exported
`config.yaml` share the same keys and defaults.
"""
from __future__ import annotations

import copy
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Task = Literal["mask", "gender", "age", "all", "multi"]
TRIAL_ERROR = "trial_error"  # the key of the result a trial that failed by itself reports last


class UserError(Exception):
    """A mistake the user can fix (bad config, missing data, corrupted image): one line, exit code 2."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    root: str = Field("", description="folder holding train.csv and images/ (the competition's train/)")
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of persons held out")
    split_seed: int = 0
    age_bounds: tuple[int, int] = Field(
        (30, 60), description="age bands of the training labels (and where a regression head's age is cut): "
        "< a, a <= age < b, >= b")
    score_age_bounds: tuple[int, int] = Field(
        (30, 60), description="the competition's age bands: every validation metric and the split's strata")
    one_image_per_person: bool = Field(False, description="train on one random image per person per epoch")
    sampler: Literal["shuffle", "balanced"] = Field(
        "shuffle", description="balanced: draw the training photos with replacement, each with a weight of one "
        "over its class's count (the task's classes; the 18 for all and multi), so every class comes about as "
        "often; with one_image_per_person it draws persons (weighted by their photos) and one photo of each "
        "draw; an epoch keeps the data set's length")
    max_persons: int | None = Field(None, gt=0, description="use only the first N persons (quick runs)")
    cache: bool = Field(True, description="decode each photo once per machine into a shared, memory-mapped "
                        "cache; false: decode every photo each time it is drawn (data too big for the disk)")
    cache_dir: str | None = Field(None, description="the cache's folder (default: $TUNE_CACHE_DIR, else "
                                  "~/.cache/tune/images); a fast local disk")

    @field_validator("age_bounds", "score_age_bounds")
    @classmethod
    def _ordered(cls, v: tuple[int, int], info: ValidationInfo) -> tuple[int, int]:
        if not 0 < v[0] < v[1]:
            raise ValueError(f"{info.field_name} must be two increasing positive ages, got {list(v)}")
        return v


class ModelConfig(Strict):
    backbone: str = "resnet18"
    pretrained: bool = Field(False, description="ImageNet weights: timm's hub where it answers, else the package "
                             "registry's for the backbones it has them for (trainables/weights.py)")
    pretrained_file: str | None = Field(None, description="a weights file in timm's layout (.safetensors or .pth); "
                                        "with pretrained: true a trial records here the file it started from")
    pretrained_sha256: str | None = Field(None, description="the SHA-256 of the weights a trial started from "
                                          "(recorded by the trial; when set, a different file is refused)")
    image_size: int = Field(224, ge=16, le=1024)
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    channels_last: bool = Field(True, description="channels_last memory format (faster on a GPU and on the CPU)")
    compile: bool = Field(False, description="torch.compile the model (slow start, faster steps)")
    frozen_layers: int = Field(0, ge=0, description="fine-tuning: the backbone's first N layer groups (timm's "
                               "group_matcher, coarse: the stem, then each stage or block) keep their pretrained "
                               "weights and batch-norm statistics through the whole schedule, and the backward "
                               "pass stops before them (lite0, 4 of its 8: a CPU training step about half as long, "
                               "benchmarks/frozen_layers.py); 0: the whole model trains")
    age_head: Literal["classify", "regress"] = Field(
        "classify", description="task age and multi: classify the age bands, or regress the age (one output, "
        "smooth L1 on a scaled age) and cut the prediction into bands at data.age_bounds")


# Augmentation presets: the values a preset gives the fields left unset.
AUGMENT_PRESETS: dict[str, dict[str, float]] = {
    "none": dict(hflip=0.0, crop_scale=1.0, color_jitter=0.0, grayscale=0.0, sharpen=0.0, grid_dropout=0.0),
    "light": dict(hflip=0.5, crop_scale=0.85, color_jitter=0.1, grayscale=0.0, sharpen=0.0, grid_dropout=0.0),
    "medium": dict(hflip=0.5, crop_scale=0.7, color_jitter=0.2, grayscale=0.1, sharpen=0.1, grid_dropout=0.1),
    "heavy": dict(hflip=0.5, crop_scale=0.5, color_jitter=0.3, grayscale=0.2, sharpen=0.2, grid_dropout=0.3),
}


class AugmentConfig(Strict):
    preset: Literal["none", "light", "medium", "heavy"] = "light"
    center_crop: tuple[int, int] | None = Field(
        (384, 320), description="[height, width] cut from the middle of the photo before resizing; null: none"
    )
    hflip: float | None = Field(None, ge=0.0, le=1.0, description="probability of a horizontal flip")
    crop_scale: float | None = Field(None, gt=0.0, le=1.0, description="random resized crop min area; 1: off")
    color_jitter: float | None = Field(None, ge=0.0, le=1.0, description="brightness/contrast/saturation")
    grayscale: float | None = Field(None, ge=0.0, le=1.0, description="probability")
    sharpen: float | None = Field(None, ge=0.0, le=1.0, description="probability")
    grid_dropout: float | None = Field(None, ge=0.0, le=1.0, description="probability")
    decode_margin: float = Field(0.0, ge=0.0, le=1.0, description="decode photos this much larger than "
                                 "model.image_size (0.15: 15%), so random crops keep their detail")
    mixup: float = Field(0.0, ge=0.0, description="MixUp's alpha (a batch is blended with itself reversed, "
                         "weights from Beta(alpha, alpha); timm's Mixup); 0: off")
    cutmix: float = Field(0.0, ge=0.0, description="CutMix's alpha (a box of the paired photo pasted in); 0: off")
    mix_prob: float = Field(1.0, ge=0.0, le=1.0, description="mixup/cutmix: the share of batches mixed")
    mix_switch_prob: float = Field(0.5, ge=0.0, le=1.0, description="mixup and cutmix both on: the share of "
                                   "mixed batches that take CutMix")

    def decoded_size(self, image_size: int) -> int:
        """The size photos are decoded (and cached) at for a model input of image_size."""
        return round(image_size * (1 + self.decode_margin))

    @model_validator(mode="after")
    def _fill_from_preset(self) -> AugmentConfig:
        for key, value in AUGMENT_PRESETS[self.preset].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        return self


class LossConfig(Strict):
    name: Literal["cross_entropy", "focal", "f1"] = "cross_entropy"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="cross_entropy and focal")
    gamma: float = Field(2.0, ge=0.0, description="focal")
    class_weights: Literal["none", "balanced"] = "none"


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam", "adamw", "sam"] = "adamw"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd, and sam over sgd")
    nesterov: bool = Field(False, description="sgd, and sam over sgd")
    rho: float = Field(0.05, gt=0.0, description="sam: radius of the ascent step")
    decay_norm_and_bias: bool = Field(False, description="decay biases and norm weights too; default: only the "
                                      "weights of convolutions and linear layers (timm's parameter groups)")
    base: Literal["sgd", "adam", "adamw"] = Field("sgd", description="sam: the optimizer it wraps")
    layer_decay: float | None = Field(None, gt=0.0, le=1.0, description="fine-tuning: layer-wise learning-rate "
                                      "decay (timm's param_groups_layer_decay): the head learns at lr, each block "
                                      "before it at this much of the next one's (0.75: the stem at a few percent); "
                                      "null: one lr for every layer")


class ScheduleConfig(Strict):
    name: Literal["cosine", "step", "none"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0)
    step_epochs: int = Field(3, gt=0, description="step: epochs between decays")
    step_gamma: float = Field(0.1, gt=0.0, le=1.0, description="step: decay factor")


class TrainConfig(Strict):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int | None = Field(None, ge=0, description="loader workers; default: the trial's CPUs - 1")
    keep_checkpoints: int = Field(2, gt=0, description="best checkpoints kept per trial")
    ema: float | None = Field(None, gt=0.0, lt=1.0, description="the decay of an exponential moving average of "
                              "the weights (0.999; timm's ModelEmaV3, warmed up over the first steps): the average "
                              "is what is validated, checkpointed and exported; null: off")
    head_warmup: float = Field(0.0, ge=0.0, description="fine-tuning: epochs (a fraction too) at the start that "
                               "train the new classifier alone, the backbone frozen (its weights and batch-norm "
                               "statistics), at most a sixth of the schedule; 0: off")
    average_last: int | None = Field(None, ge=2, description="at the schedule's end, the mean of the weights after "
                                     "each of its last N epochs, kept in place of the last epoch's when it scores "
                                     "better on the validation persons (one more validation pass); null: off")

    def head_warmup_epochs(self, epochs: int | None = None) -> float:
        """The head's warm-up in a schedule of `epochs` (default: train.epochs): head_warmup, at most a sixth of it
        (half an epoch of 3 scored +0.010 macro F1, benchmarks/techniques.py; with half of a 1-epoch schedule on
        the head alone, cpu.yaml's prior validated at 0.409, with a sixth at 0.496: search_quality.py --budget 5m)."""
        return min(self.head_warmup, (self.epochs if epochs is None else epochs) / 6)


class TrialConfig(Strict):
    task: Task = "all"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    augment: AugmentConfig = AugmentConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()

    @field_validator("data", mode="before")
    @classmethod
    def _data_as_path(cls, v: object) -> object:
        return {"root": v} if isinstance(v, str) else v

    @field_validator("model")
    @classmethod
    def _age_head_of_the_task(cls, v: ModelConfig, info: ValidationInfo) -> ModelConfig:
        task = info.data.get("task")
        if v.age_head == "regress" and task is not None and task not in ("age", "multi"):
            raise ValueError(f"age_head: regress needs task age or multi (a head of its own for age), "
                             f"but task is {task}")
        return v


TRIAL_SECTIONS = tuple(TrialConfig.model_fields)


def set_dotted(tree: dict, path: str, value: object) -> None:
    """Set tree["a"]["b"] = value for path "a.b", creating the dicts on the way."""
    *parents, leaf = path.split(".")
    for key in parents:
        if tree.get(key) is None:
            tree[key] = {}
        tree = tree[key]
        if not isinstance(tree, dict):
            raise UserError(f"cannot set {path}: {key} holds a value, not a section of keys")
    tree[leaf] = value


def resolve_trial(base: dict, sampled: dict[str, object]) -> TrialConfig:
    """The trial's config: the study's fixed values with the sampled ones (dotted keys) set on top."""
    tree = copy.deepcopy(base)
    for path, value in sampled.items():
        set_dotted(tree, path, value)
    return TrialConfig.model_validate(tree)

"""A study: its YAML file, validated into `StudyConfig` with every default filled in.

A study file holds the trial's fixed values (the sections of `TrialConfig`: task, data, model, augment,
loss, optimizer, schedule, train), the search space over them (`space`, see `tune/space.py`), and how to
search (`search`, `scheduler`, `resources`). Mistakes end in `UserError` naming the file and the key.
"""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from trainables.config import TRIAL_SECTIONS, Strict, TrialConfig, UserError, set_dotted


class SearchConfig(Strict):
    algorithm: Literal["tpe", "random", "cmaes"] = "tpe"
    seed: int = 0
    num_samples: int = Field(8, gt=0, description="trials to run (a resumed study grows to this many)")
    startup_trials: int = Field(10, ge=0, description="random trials before TPE or CMA-ES model the results")
    max_concurrent: int | None = Field(None, gt=0, description="trials at once; default: as resources allow")
    time_budget_s: float | None = Field(None, gt=0, description="wall seconds from the start of `tune run` to the "
                                        "study's end (--time-budget): the study plans its trials' length and how many "
                                        "run at once from the pace it measures (tune/plan.py); train.epochs is "
                                        "then replaced by the plan")
    min_epochs: int = Field(4, gt=0, description="with a time budget: the shortest schedule worth comparing trials "
                            "by; a budget that holds less trains the study's fixed values alone, on every CPU")
    max_epochs: int | None = Field(None, gt=0, description="with a time budget: the longest schedule the plan may "
                                   "give a trial (default: as long as the budget allows); a budget that holds "
                                   "longer trials plans more of them, one after the other, of equal length")
    image_sizes: list[Annotated[int, Field(gt=0)]] | None = Field(
        None, min_length=1, description="with a time budget: the photo sizes (px) the plan may train at, in place "
        "of model.image_size: the largest at which the trials still get min_epochs epochs (each size's pace "
        "measured), so that a longer budget buys larger photos first")
    max_failures: int = Field(2, ge=0, description="retries (from its last checkpoint) of a trial whose process "
                              "died; a trial that fails by itself is not retried")
    metric: Literal["val_f1", "val_f1_18", "val_acc", "val_loss"] = "val_f1"


class SchedulerConfig(Strict):
    name: Literal["asha", "fifo"] = "asha"
    max_t: int | None = Field(None, gt=0, description="epochs a trial may reach; default: train.epochs")
    grace_period: int = Field(1, gt=0, description="epochs before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1.0)


class ResourcesConfig(Strict):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0, description="fractions share a GPU: 0.25 = four trials per GPU")


class StudyConfig(TrialConfig):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    space: dict[str, Any] = Field(default_factory=dict, description="dotted trial key -> distribution")
    search: SearchConfig = SearchConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    resources: ResourcesConfig = ResourcesConfig()
    storage: str | None = Field(None, description="where the study's checkpoints and Ray's experiment state go: "
                                "a folder every node mounts, or s3://bucket/prefix, gs://... (--storage; default: "
                                "$TUNE_STORAGE, else mlruns/ray)")

    @field_validator("space", mode="before")
    @classmethod
    def _empty_space(cls, value):
        return {} if value is None else value  # `space:` with nothing under it: refused by `tune run` (check_study)

    @model_validator(mode="after")
    def _one_way_to_size(self) -> StudyConfig:
        if self.search.image_sizes and "model.image_size" in self.space:
            raise ValueError("search.image_sizes and a searched model.image_size: keep one (the plan picks a size "
                             "from search.image_sizes; the space samples one per trial): search: {image_sizes: "
                             "null} searches the size")
        return self

    @model_validator(mode="after")
    def _max_t_within_epochs(self) -> StudyConfig:
        if self.scheduler.max_t is None:
            self.scheduler.max_t = self.train.epochs
        elif self.scheduler.max_t > self.train.epochs:
            raise ValueError(f"scheduler.max_t ({self.scheduler.max_t}) exceeds train.epochs ({self.train.epochs})")
        return self

    @property
    def mode(self) -> str:
        return "min" if self.search.metric == "val_loss" else "max"

    def trial_base(self) -> dict:
        """The trial's fixed values as the user wrote them (unset keys keep the trial's defaults and presets)."""
        return self.model_dump(mode="json", include=set(TRIAL_SECTIONS), exclude_unset=True) | {
            "data": self.data.model_dump(mode="json", exclude_unset=True) | {"root": self.data.root}}

    def trial_defaults(self) -> TrialConfig:
        """The trial config with nothing sampled."""
        return TrialConfig.model_validate(self.trial_base())


def parse_value(text: str) -> Any:
    """A --set value as YAML reads it: 3 is an int, 1e-3 a float, true a bool, [1, 2] a list."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def cli_overrides(sets: list[str], flags: dict) -> dict:
    """Dotted keys to set in a YAML: each --set KEY=VALUE, then the command's flags that were given."""
    out = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set takes KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_value(value)
    out.update({k: v for k, v in flags.items() if v is not None})
    return out


def parse_duration(text: str) -> float:
    """Seconds from a wall-clock duration: 1200, 90s, 20m, 1.5h or 1h30m."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not text.strip() or parts is None:
        raise UserError(f"a time budget is a duration such as 1200, 90s, 20m, 1.5h or 1h30m; got {text!r}")
    seconds = sum(float(v) * unit for v, unit in zip(parts.groups(), (3600, 60, 1), strict=True) if v)
    if seconds <= 0:
        raise UserError(f"a time budget must be more than zero, got {text!r}")
    return seconds


def load_study(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read (with the files it `extends:`), override (dotted keys) and validate a study file. Relative data paths
    become absolute."""
    path = Path(path)
    raw = read_study_file(path)
    raw.setdefault("name", path.stem)
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    try:
        study = StudyConfig.model_validate(raw)
    except ValidationError as e:
        raise UserError(f"{path}: {explain(e, raw)}") from None
    if study.data.root:  # Ray runs trials in other folders: paths become absolute here
        study.data.root = str(Path(study.data.root).expanduser().resolve())
    if study.model.pretrained_file:
        study.model.pretrained_file = str(Path(study.model.pretrained_file).expanduser().resolve())
    return study


def read_study_file(path: Path, extended_by: tuple[Path, ...] = ()) -> dict:
    """A study file's keys, on top of the file it names in `extends:` (relative to its own folder), if any:
    mappings merge key by key and the extending file's values win (`null` too, except that a key of `space:`
    set to null is no longer searched). `name` is each file's own."""
    if not path.is_file():
        raise UserError(f"study file not found: {path}" if not extended_by else
                        f"{extended_by[-1]}: extends: {path} is not a file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "context_mark", None) or getattr(e, "problem_mark", None)  # where the broken part starts
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: YAML syntax error: {getattr(e, 'problem', None) or e}") from None
    if raw is None:
        raise UserError(f"{path}: the study file is empty (search_spaces/ has examples to start from)")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a study file is a mapping of keys, got {type(raw).__name__}")
    if isinstance(raw.get("data"), str):
        raw["data"] = {"root": raw["data"]}
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise UserError(f"{path}: extends: takes the path of another study file, got {base!r}")
    chain = (*extended_by, path.resolve())
    if (path.parent / base).resolve() in chain:
        raise UserError(f"{path}: extends: {base} extends this file again (a circle)")
    inherited = read_study_file(path.parent / base, chain)
    inherited.pop("name", None)
    out = merged(inherited, raw)
    if isinstance(out.get("space"), dict):
        out["space"] = {key: value for key, value in out["space"].items() if value is not None}
    return out


def merged(base: dict, over: dict) -> dict:
    """`over` on top of `base`: mappings merge key by key, other values replace."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else value
    return out


def explain(error: ValidationError, raw: dict) -> str:
    """The first validation error as one line: the dotted key, what is wrong, and the nearest valid key."""
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    key = ".".join(loc)
    if first["type"] == "extra_forbidden":
        valid = _fields_at(loc[:-1])
        near = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f"; did you mean {'.'.join(loc[:-1] + near)}?" if near else f"; valid keys here: {', '.join(valid)}"
        return f"unknown key {key}{hint}"
    if not loc:  # a rule across keys (a model validator): its message names them, the input is the whole file
        return first["msg"].removeprefix("Value error, ")
    return f"{key}: {first['msg']} (got {first.get('input')!r})"


def _fields_at(loc: list[str]) -> list[str]:
    model: Any = StudyConfig
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not hasattr(field.annotation, "model_fields"):
            return []
        model = field.annotation
    return list(model.model_fields)

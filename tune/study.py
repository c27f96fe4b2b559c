"""Running a study: checks first, then Ray Tune with the Optuna searcher and ASHA, tracked in MLflow.

Everything a user can get wrong is checked before anything is written (`check_study`): the space, the
backbone, the data (every photo decoded once), the resources. Then the study's parent run is created, and
Ray Tune runs the trials (`trainables.trainable.train_trial`), with `StudyTracker` logging each one.
"""
from __future__ import annotations

import os
from pathlib import Path

import optuna
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from trainables import cache, data
from trainables.config import AugmentConfig, UserError
from trainables.models import check_backbone
from trainables.trainable import train_trial
from tune import space, tracking
from tune.config import StudyConfig

RAY_DIR = Path("mlruns") / "ray"  # Ray Tune's experiment folders (trial checkpoints), one per study


def study_path(name: str) -> Path:
    return (RAY_DIR / name).resolve()


def check_study(study: StudyConfig, where: str, cluster: bool) -> list:
    """Validate what a study needs before it starts; returns the parsed space. Raises UserError."""
    nodes = space.parse_space(study.space, study.trial_base(), where)
    check_backbones(study, nodes)
    if study.resources.gpus_per_trial > 0 and not cluster:
        import torch

        if torch.cuda.device_count() < study.resources.gpus_per_trial:
            raise UserError(f"gpus_per_trial is {study.resources.gpus_per_trial}, but this machine has "
                            f"{torch.cuda.device_count()} CUDA GPU(s)")
    if study.resources.cpus_per_trial > (os.cpu_count() or 1) and not cluster:
        raise UserError(f"cpus_per_trial is {study.resources.cpus_per_trial}, "
                        f"but this machine has {os.cpu_count()} CPUs")
    if not study.data.root:
        raise UserError(f"{where}: no data folder: set data: in the file or pass --data DIR")
    table = data.read_table(study.data.root, study.data.max_persons)
    data.split_persons(table, study.data)
    files, workers = table["file"].tolist(), os.cpu_count() or 1
    if study.data.cache:  # decode every photo once, for all trials: this checks them too
        for size, crop in decodings(study, nodes):
            cache.cached_images(files, size, crop, cache.cache_dir(study.data.cache_dir), study.data.root,
                                workers=workers, progress=True)
    else:
        data.load_images(files, 32, None, workers=workers, progress=True, desc="checking images")
    return nodes


def decodings(study: StudyConfig, nodes: list) -> list[tuple[int, tuple[int, int] | None]]:
    """The (decoded size, centre crop) pairs the trials will ask the cache for, where the space lists them all.

    A size searched over a range is left to the trials: the first to need a size decodes it.
    """
    base = study.trial_defaults()
    values = {"model.image_size": [], "augment.center_crop": [], "augment.decode_margin": []}
    for param in _params(nodes):
        if param.path in values:
            if param.kind != "choice":
                values = {}
                break
            values[param.path] += param.values
    sizes = values.get("model.image_size") or [base.model.image_size]
    crops = values.get("augment.center_crop") or [base.augment.center_crop]
    margins = values.get("augment.decode_margin") or [base.augment.decode_margin]
    pairs = {(AugmentConfig(decode_margin=m).decoded_size(s), tuple(c) if c else None)
             for s in sizes for c in crops for m in margins}
    return sorted(pairs, key=str)


def check_name(name: str, resume: bool) -> None:
    """A new study needs a new name; --resume needs an interrupted study of that name."""
    path = study_path(name)
    if resume and not tune.Tuner.can_restore(str(path)):
        raise UserError(f"no interrupted study {name!r} to resume in {path}")
    if not resume and path.exists():
        raise UserError(f"study {name!r} exists ({path}): pass --resume to continue it or --name for a new one")


def check_backbones(study: StudyConfig, nodes: list) -> None:
    """Every backbone the study can use must be one timm knows."""
    model = study.trial_defaults().model
    backbones = {model.backbone} | {v for n in _params(nodes) if n.path == "model.backbone" for v in n.values}
    for name in sorted(backbones):
        check_backbone(model.model_copy(update={"backbone": name}))


def _params(nodes: list):
    for node in nodes:
        if isinstance(node, space.Param):
            yield node
        elif isinstance(node, space.Branching):
            for sub in node.branches.values():
                yield from _params(sub)


def searcher(study: StudyConfig, nodes: list) -> OptunaSearch:
    seed = study.search.seed
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
    }
    return OptunaSearch(space=space.SpaceSampler(nodes), metric=study.search.metric, mode=study.mode,
                        sampler=samplers[study.search.algorithm]())


def scheduler(study: StudyConfig):
    s = study.scheduler
    if s.name == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="training_iteration", max_t=s.max_t, grace_period=min(s.grace_period, s.max_t),
                         reduction_factor=s.reduction_factor)


def settings(study: StudyConfig) -> dict:
    return {"search": study.search.model_dump(), "scheduler": study.scheduler.model_dump(),
            "resources": study.resources.model_dump()}


def run_study(study: StudyConfig, nodes: list, uri: str, resume: bool = False, address: str | None = None):
    """Run (or resume) the study to the end and return Ray's ResultGrid."""
    import ray

    path = study_path(study.name)
    client = tracking.connect(uri)
    base = study.trial_base()
    parent = tracking.find_study_run(client, study.name) if resume else None
    if parent is None:
        resolved = yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False)
        parent = tracking.start_study_run(client, study.name, resolved, space.describe(nodes), settings(study))
    client.update_run(parent, status="RUNNING")
    # Trials import `trainables` from this checkout, wherever Ray starts their worker processes.
    project = str(Path(__file__).resolve().parent.parent)
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [project, os.environ.get("PYTHONPATH")]))}}
    ray.init(address=address, runtime_env=runtime_env, include_dashboard=False, log_to_driver=True,
             configure_logging=False)
    try:
        resources = {"cpu": study.resources.cpus_per_trial, "gpu": study.resources.gpus_per_trial}
        trainable = tune.with_resources(tune.with_parameters(train_trial, base=base), resources)
        if resume:
            tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=False)
        else:
            tracker = tracking.StudyTracker(uri, study.name, parent, base, study.train.epochs,
                                            study.search.metric, study.mode)
            checkpoints = tune.CheckpointConfig(num_to_keep=study.train.keep_checkpoints,
                                                checkpoint_score_attribute=study.search.metric,
                                                checkpoint_score_order=study.mode)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    metric=study.search.metric, mode=study.mode, search_alg=searcher(study, nodes),
                    scheduler=scheduler(study), num_samples=study.search.num_samples,
                    max_concurrent_trials=study.search.max_concurrent, time_budget_s=study.search.time_budget_s),
                run_config=tune.RunConfig(
                    name=study.name, storage_path=str(path.parent), callbacks=[tracker],
                    checkpoint_config=checkpoints, failure_config=tune.FailureConfig(max_failures=0),
                    verbose=1),
            )
        return tuner.fit()
    finally:
        ray.shutdown()

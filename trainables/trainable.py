"""The Ray Tune entry point: one trial = one `Trial`, reported once per epoch with a checkpoint.

This is the only module of `trainables/` that talks to Ray. The study passes its fixed values as `base`
(through `tune.with_parameters`); the searcher's sampled values arrive as `config`, keyed by dotted paths.
"""
from __future__ import annotations

import json
import tempfile

from ray import tune

from trainables.config import resolve_trial
from trainables.trial import Trial


def train_trial(config: dict, base: dict) -> None:
    cfg = resolve_trial(base, config)
    resources = tune.get_context().get_trial_resources().required_resources
    trial = Trial(cfg, cpus=int(resources.get("CPU", 1)), gpu_share=resources.get("GPU", 1.0) or 1.0)
    checkpoint = tune.get_checkpoint()
    if checkpoint:  # a restarted or resumed trial continues after its last reported epoch
        with checkpoint.as_directory() as folder:
            trial.load(folder)
    while trial.epoch < cfg.train.epochs:
        result = trial.run_epoch()
        with tempfile.TemporaryDirectory() as folder:
            trial.save(folder, {**result, "ray_trial_id": tune.get_context().get_trial_id()})
            result["confusion"] = json.dumps(result["confusion"])
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))

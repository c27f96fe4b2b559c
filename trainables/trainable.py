"""The Ray Tune entry point: one trial = one `Trial`, reported once per epoch with a checkpoint.

This is the only module of `trainables/` that talks to Ray. The study passes its fixed values as `base`
(through `tune.with_parameters`); the searcher's sampled values arrive as `config`, keyed by dotted paths.

Two kinds of failure end a trial differently. A trial that fails by itself (a NaN loss, a config its model
cannot build) reports its traceback under `TRIAL_ERROR` and returns: Ray sees it end, so it is not retried, and
the driver marks it failed. A trial whose process dies (killed, out of memory, its node lost) raises nothing
here: Ray retries it (`search.max_failures`) from its last checkpoint, and it continues after that epoch.
"""
from __future__ import annotations

import json
import tempfile
import time
import traceback
from pathlib import Path

import ray
from ray import tune

import trainables
from trainables.config import TRIAL_ERROR, resolve_trial
from trainables.trial import Trial

CODE = str(Path(trainables.__file__).parent)  # where this process imported `trainables` from (Ray's shipped copy)


def train_trial(config: dict, base: dict, end_by: float | None = None) -> None:
    """end_by: when the study's time budget ends (time.time()); a trial whose schedule would end later is
    re-planned after each epoch at its own slowest epoch so far (`Trial.replan`), so that its schedule still ends."""
    try:
        trial = start_trial(resolve_trial(base, config))
    except Exception:  # noqa: BLE001 - the trial's own failure (a config its model cannot build): not retried
        return report_failure(0)
    last = time.time()
    while trial.epoch < trial.cfg.train.epochs:
        try:
            result = trial.run_epoch()
        except Exception:  # noqa: BLE001 - the trial's own failure (a NaN loss): not retried
            return report_failure(trial.epoch)
        span = time.time() - last - result.get("first_step_s", 0.0)  # the first epoch's loader start left out
        last = time.time()
        if end_by is not None and trial.replan(end_by, span):
            result["planned_epochs"] = trial.cfg.train.epochs
        result = trial.end_epoch(result)  # at the schedule's end, with train.average_last: its last epochs' mean
        with tempfile.TemporaryDirectory() as folder:
            trial.save(folder, {**result, "ray_trial_id": tune.get_context().get_trial_id()})
            result["confusion"] = json.dumps(result["confusion"])
            result.update(node_id=ray.get_runtime_context().get_node_id(), code=CODE)  # for the trial's MLflow run
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))


def start_trial(cfg) -> Trial:
    """The trial on this worker's resources, after its last reported epoch if Ray restarted or resumed it."""
    resources = tune.get_context().get_trial_resources().required_resources
    trial = Trial(cfg, cpus=int(resources.get("CPU", 1)), gpu_share=resources.get("GPU", 1.0) or 1.0)
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            trial.load(folder)
    return trial


def report_failure(epoch: int) -> None:
    """End the trial with its traceback as its last result (Ray sees it end, so it does not retry it)."""
    tune.report({"epoch": epoch, TRIAL_ERROR: traceback.format_exc()})

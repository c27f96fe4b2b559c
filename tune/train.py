"""Train one configuration without a search: a study's fixed values or an export's config.yaml.

    tune train CONFIG.yaml                the seeded person split; keeps the best epoch (by val_f1)
    tune train CONFIG.yaml --full         every person, no validation: the final model (its last epoch)
    tune train CONFIG.yaml --folds K      K models on person-stratified folds (each keeps its last epoch), and
                                          their out-of-fold macro F1
    tune train CONFIG.yaml --time-budget 20m   as many epochs (up to train.epochs) as end within 20 minutes of
                                          the command's start: no epoch starts that would end after it

Each model is written as an export (the same files as `tune export`), so `tune predict` and `tune evaluate`
take it, and tracked in MLflow (experiment `train`, or `--experiment`): a run per model with its config as
params and per-epoch metrics; with --folds, one parent run with the out-of-fold scores and a child per fold.
Training an export's config.yaml again with the same data, seed and CPUs gives its val_f1 back (on the CPU).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from safetensors.torch import save_model

from trainables import data, metrics
from trainables.config import TrialConfig, UserError
from trainables.models import check_backbone
from trainables.trial import Trial
from trainables.weights import with_weights
from tune import tracking
from tune.export import weights_held, write_export
from tune.plan import plan_training

METRIC = "val_f1"


def train_one(cfg: TrialConfig, out: Path, client, experiment: str, cpus: int, split=None, parent: str | None = None,
              name: str | None = None, keep: str = "best", deadline: float | None = None, longest: int | None = None
              ) -> tuple[dict, tuple[np.ndarray, np.ndarray] | None]:
    """Train `cfg` (on `split` when given) into the export folder `out`, keeping its best epoch by val_f1 (or
    its last: keep="last", and always without validation). With a `deadline` (time.time()), the schedule is
    re-planned after each epoch to end by it at the slowest epoch so far, plus 10% (`Trial.replan`: the learning rate
    follows the new length, so the schedule still ends; early in it, up to `longest` epochs when the epochs run
    faster than the plan measured), and no epoch starts that would end after it. Returns the kept
    epoch's metrics and, with validation, (the model's outputs, the truth) of the validation photos then."""
    run = client.create_run(tracking.experiment_id(client, experiment), run_name=name or out.name,
                            tags={"tune.role": "train", **({"mlflow.parentRunId": parent} if parent else {})})
    run_id = run.info.run_id
    tracking.log_params(client, run_id, tracking.flatten(cfg.model_dump(mode="json")))
    kept, kept_outputs = None, None
    try:
        trial = Trial(cfg, cpus=cpus, progress=True, split=split)
        trial.planned = max(trial.planned, longest or 0)  # the plan's length is a measured guess: it may grow
        out.mkdir(parents=True, exist_ok=True)
        while trial.epoch < cfg.train.epochs:
            if deadline is not None and trial.epoch and time.time() + trial.slowest + trial.end_reserve_s > deadline:
                print(f"stopped after epoch {trial.epoch}: another (about {trial.slowest:.0f} s) would end after "
                      "the time budget", flush=True)
                break
            started = time.time()
            result = trial.run_epoch()
            if deadline is not None and trial.replan(deadline, time.time() - started):
                print(f"re-planned: {trial.cfg.train.epochs} epochs end within the time budget", flush=True)
            result = trial.end_epoch(result)  # at the schedule's end, with train.average_last: its last epochs' mean
            for key, value in result.items():
                if isinstance(value, (int, float)):
                    client.log_metric(run_id, key, float(value), step=trial.epoch)
            own = result.get("last_epoch_val_f1", result.get(METRIC))  # the epoch's own weights, not their mean
            shown = f"val_f1 {own:.4f}" if own is not None else "no validation"
            print(f"epoch {trial.epoch}/{cfg.train.epochs}: train_loss {result['train_loss']:.4f}, {shown} "
                  f"({result['epoch_time_s']:.0f} s)", flush=True)
            if "average_val_f1" in result:
                first = trial.epoch - trial.tail_epochs + 1
                print(f"the mean of epochs {first}-{trial.epoch}'s weights: val_f1 {result['average_val_f1']:.4f}, "
                      + (f"better than epoch {trial.epoch}'s: it replaces them" if result["averaged_epochs"] else
                         f"not better than epoch {trial.epoch}'s: not used"), flush=True)
            if kept is None or keep == "last" or METRIC not in result or result[METRIC] > kept[METRIC]:
                kept, kept_outputs = result, trial.val_outputs if METRIC in result else None
                save_model(trial.scored_model, str(out / "model.safetensors"))
        kept = {**kept, "trained_by": "tune train", "kept_epoch": keep, "mlflow_run_id": run_id}
        if keep == "best" and METRIC in kept:
            print(f"kept: {weights_held(kept)}, the best on the validation persons (val_f1 {kept[METRIC]:.4f})",
                  flush=True)
        write_export(out, trial.cfg, kept, (trial.train_persons, trial.val_persons))  # its epochs as trained
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.log_artifacts(run_id, str(out), "export")
    client.set_terminated(run_id, "FINISHED")
    return kept, (kept_outputs, trial.val_truth) if kept_outputs is not None else None


def train(cfg: TrialConfig, out: Path, uri: str, experiment: str = "train", full: bool = False,
          folds: int | None = None, cpus: int = 1, time_budget_s: float | None = None) -> dict:
    """Train as asked (split, --full or --folds; a time budget for the first two) and return the summary that
    is printed. With a time budget, the schedule's length (train.epochs at most) is planned from the pace
    measured here, so that it ends within the budget (tune/plan.py)."""
    check_backbone(cfg.model, download=True)  # timm's hub asked here, once; then the file and its hash recorded
    cfg = cfg.model_copy(update={"model": with_weights(cfg.model)})
    longest = None  # with a time budget: the config's own train.epochs, which the plan's length may grow to
    deadline = time.time() + time_budget_s if time_budget_s else None
    if deadline is not None and folds is not None:
        raise UserError("--time-budget trains one model (the split or --full), not --folds")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} is not empty: pass --out with a new folder")
    table = data.read_table(cfg.data.root, cfg.data.max_persons)
    every = (sorted(table["person"].unique()), []) if full else None  # --full: every person, no validation
    if deadline is not None:
        epochs, pace = plan_training(cfg, deadline - time.time(), cpus, every)
        print(f"plan: {pace.epoch_s:.0f} s an epoch on {cpus} CPU(s){pace.warmup_note(epochs)} (measured): {epochs} "
              f"of train.epochs {cfg.train.epochs} end within the time budget", flush=True)
        longest = cfg.train.epochs
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs})})
    splits = data.fold_persons(table, cfg.data, folds) if folds is not None else None  # checks K first
    client = tracking.connect(uri)
    if every is not None:
        result, _ = train_one(cfg, out, client, experiment, cpus, split=every, deadline=deadline, longest=longest)
        return {"export": str(out), "persons": len(every[0]), "epochs": result["epoch"]}
    if splits is None:
        result, _ = train_one(cfg, out, client, experiment, cpus, deadline=deadline, longest=longest)
        return {"export": str(out), "epoch": result["epoch"], METRIC: result[METRIC]}
    parent = client.create_run(tracking.experiment_id(client, experiment), run_name=f"{out.name} ({folds} folds)",
                               tags={"tune.role": "folds"}).info.run_id
    tracking.log_params(client, parent, {"folds": folds, **tracking.flatten(cfg.model_dump(mode="json"))})
    fold_outputs, truth, per_fold = [], [], []
    try:
        for k, split in enumerate(splits):
            print(f"fold {k + 1}/{folds}: {len(split[0])} training, {len(split[1])} validation persons", flush=True)
            # every fold trains the same epochs and keeps its last: no fold is picked by its own validation score
            result, (o, t) = train_one(cfg, out / f"fold-{k}", client, experiment, cpus, split, parent, f"fold {k}",
                                       keep="last")
            per_fold.append(result[METRIC])
            fold_outputs.append(o)
            truth.append(t)
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    oof = metrics.score(cfg, np.concatenate(fold_outputs), np.concatenate(truth))["val_f1"]
    summary = {"export": str(out), "folds": folds, "oof_f1": oof, "fold_f1": per_fold,
               "fold_f1_mean": float(np.mean(per_fold))}
    client.log_metric(parent, "oof_f1", oof)
    client.log_metric(parent, "fold_f1_mean", summary["fold_f1_mean"])
    client.log_dict(parent, summary, "folds.json")
    client.set_terminated(parent, "FINISHED")
    return summary


def default_out(config_path: str, full: bool, folds: int | None) -> Path:
    kind = "full" if full else (f"{folds}folds" if folds else "split")
    return Path("exports") / f"{Path(config_path).stem}-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"

"""Train one configuration without a search: a study's fixed values or an export's config.yaml.

    tune train CONFIG.yaml                the seeded person split; keeps the best epoch (by val_f1)
    tune train CONFIG.yaml --full         every person, no validation: the final model (its last epoch)
    tune train CONFIG.yaml --folds K      K models on person-stratified folds, and their out-of-fold macro F1

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

from trainables import data, metrics, outputs
from trainables.config import TrialConfig
from trainables.trial import Trial
from tune import tracking
from tune.export import write_export

METRIC = "val_f1"


def train_one(cfg: TrialConfig, out: Path, client, experiment: str, cpus: int, split=None, parent: str | None = None,
              name: str | None = None) -> tuple[dict, Trial]:
    """Train `cfg` (on `split` when given) into the export folder `out`; returns the kept epoch's metrics."""
    run = client.create_run(tracking.experiment_id(client, experiment), run_name=name or out.name,
                            tags={"tune.role": "train", **({"mlflow.parentRunId": parent} if parent else {})})
    run_id = run.info.run_id
    tracking.log_params(client, run_id, tracking.flatten(cfg.model_dump(mode="json")))
    trial = Trial(cfg, cpus=cpus, progress=True, split=split)
    out.mkdir(parents=True, exist_ok=True)
    kept, kept_outputs = None, None
    try:
        while trial.epoch < cfg.train.epochs:
            result = trial.run_epoch()
            numbers = {k: float(v) for k, v in result.items() if isinstance(v, (int, float))}
            for key, value in numbers.items():
                client.log_metric(run_id, key, value, step=trial.epoch)
            shown = f"val_f1 {result[METRIC]:.4f}" if METRIC in result else "no validation"
            print(f"epoch {trial.epoch}/{cfg.train.epochs}: train_loss {result['train_loss']:.4f}, {shown} "
                  f"({result['epoch_time_s']:.0f} s)", flush=True)
            if kept is None or METRIC not in result or result[METRIC] > kept[METRIC]:
                kept, kept_outputs = result, getattr(trial, "val_outputs", None)
                save_model(trial.model, str(out / "model.safetensors"))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    kept = {**kept, "trained_by": "tune train", "mlflow_run_id": run_id}
    write_export(out, cfg, kept, (trial.train_persons, trial.val_persons))
    client.log_artifacts(run_id, str(out), "export")
    client.set_terminated(run_id, "FINISHED")
    trial.val_outputs = kept_outputs
    return kept, trial


def train(cfg: TrialConfig, out: Path, uri: str, experiment: str = "train", full: bool = False,
          folds: int | None = None, cpus: int = 1) -> dict:
    """Train as asked (split, --full or --folds) and return the summary that is printed."""
    client = tracking.connect(uri)
    table = data.read_table(cfg.data.root, cfg.data.max_persons)
    if full:
        persons = sorted(table["person"].unique())
        result, _ = train_one(cfg, out, client, experiment, cpus, split=(persons, []))
        return {"export": str(out), "persons": len(persons), "epochs": result["epoch"]}
    if not folds:
        result, _ = train_one(cfg, out, client, experiment, cpus)
        return {"export": str(out), "epoch": result["epoch"], METRIC: result[METRIC]}
    parent = client.create_run(tracking.experiment_id(client, experiment), run_name=f"{out.name} ({folds} folds)",
                               tags={"tune.role": "folds"}).info.run_id
    tracking.log_params(client, parent, {"folds": folds, **tracking.flatten(cfg.model_dump(mode="json"))})
    truth, predicted, per_fold = [], [], []
    for k, split in enumerate(data.fold_persons(table, cfg.data, folds)):
        print(f"fold {k + 1}/{folds}: {len(split[0])} training, {len(split[1])} validation persons", flush=True)
        result, trial = train_one(cfg, out / f"fold-{k}", client, experiment, cpus, split, parent, f"fold {k}")
        per_fold.append(result[METRIC])
        truth.append(trial.val_truth)
        predicted.append(outputs.predicted_classes(cfg.task, outputs.task_probabilities(cfg, trial.val_outputs)))
    n = 18 if cfg.task in ("all", "multi") else len(data.class_names(cfg.task))
    oof = metrics.macro_f1(np.concatenate(truth), np.concatenate(predicted), n)
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

"""Export the best trial of a study: weights, resolved config, metrics and class map, logged to MLflow.

The best trial is the one whose best epoch (not its last) scores highest on the study's metric; each trial
keeps its best checkpoints, so that epoch's weights are on disk. An export folder holds

    model.safetensors   weights only (no pickle)
    config.yaml         the trial's full resolved config (seed and data split included)
    metrics.json        the metrics of that epoch
    classes.json        the task, its class names and the model's output heads
    split.json          the train and validation persons of the split
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import load_model

from trainables import data
from trainables.config import TrialConfig, UserError
from tune.config import explain
from tune.outcomes import best_checkpoint
from tune.storage import Storage


def export_study(study: str, out: Path, uri: str, metric: str = "val_f1", mode: str = "max",
                 store: Storage | None = None) -> dict:
    """Write the export of the study's best trial to `out`, log it to MLflow and register it. Returns its metrics."""
    checkpoint, metrics = best_checkpoint(study, metric, mode, store)
    config = TrialConfig.model_validate_json((checkpoint / "config.json").read_text())
    trial_id = metrics.get("ray_trial_id", "")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(checkpoint / "model.safetensors", out / "model.safetensors")
    table = data.read_table(config.data.root, config.data.max_persons)
    write_export(out, config, {**metrics, "study": study, "checkpoint": str(checkpoint)},
                 data.split_persons(table, config.data))
    log_export(study, out, config, uri, trial_id)
    return metrics


def weights_held(metrics: dict) -> str:
    """What a checkpoint's weights are, from its metrics: "epoch 8", or "epochs 6-8 averaged" (train.average_last)."""
    epoch, averaged = metrics.get("epoch"), int(metrics.get("averaged_epochs") or 0)
    return f"epochs {epoch - averaged + 1}-{epoch} averaged" if averaged and epoch else f"epoch {epoch}"


def write_export(out: Path, config: TrialConfig, metrics: dict, split: tuple[list[str], list[str]]) -> None:
    """An export's files besides its weights: config.yaml, metrics.json, classes.json, split.json."""
    (out / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    classes = {"task": config.task, "classes": data.class_names(config.task, config.data.score_age_bounds),
               "heads": data.heads(config.task, config.model.age_head), "age_head": config.model.age_head,
               "age_bounds": list(config.data.age_bounds), "score_age_bounds": list(config.data.score_age_bounds)}
    (out / "classes.json").write_text(json.dumps(classes, indent=1))
    (out / "split.json").write_text(json.dumps({"train": list(split[0]), "val": list(split[1])}))


def export_split(folder: str | Path) -> tuple[list[str], list[str]]:
    """The (train, validation) persons an export was trained and validated on."""
    split = json.loads((Path(folder) / "split.json").read_text())
    return split["train"], split["val"]


DOWNLOADS = Path("mlruns") / "downloads"  # exports fetched from a tracking server, one folder per address


def fetch_export(ref: str, uri: str) -> str:
    """An export folder on this machine: `ref` itself, or, for an MLflow address of a logged export
    (runs:/RUN_ID/export, what `tune export` logs to the trial's run), its files downloaded through the
    tracking server `uri` once (a teammate's export, from the shared server)."""
    if not ref.startswith(("runs:/", "mlflow-artifacts:/")):
        return ref
    folder = DOWNLOADS.resolve() / hashlib.sha1(f"{uri} {ref}".encode()).hexdigest()[:16]
    if not (folder / ".complete").is_file():
        import mlflow

        folder.mkdir(parents=True, exist_ok=True)
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(folder), tracking_uri=uri)
        except Exception as e:  # noqa: BLE001 - MLflow's own error, shortened to one line
            raise UserError(f"{ref}: cannot download it from {uri}: {str(e).splitlines()[0]}") from None
        (folder / ".complete").touch()
    ensembles = [p.parent for p in folder.rglob("ensemble.json")]  # tune export --ensemble: one model
    found = ensembles or [p.parent for p in folder.rglob("config.yaml")]
    if len(found) != 1:
        raise UserError(f"{ref} holds no export (config.yaml and model.safetensors)" if not found else
                        f"{ref} holds {len(found)} exports: name one")
    return str(found[0])


def export_config(folder: str | Path, data_root: str | None = None) -> TrialConfig:
    """An export's config, its weights coming from model.safetensors (no hub, no weights file)."""
    folder = Path(folder)
    if not (folder / "config.yaml").is_file() or not (folder / "model.safetensors").is_file():
        raise UserError(f"{folder} is not an export (needs config.yaml and model.safetensors)")
    try:
        raw = yaml.safe_load((folder / "config.yaml").read_text())
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
            raise ValueError("no model: section")
        raw["model"].update(pretrained=False, pretrained_file=None, pretrained_sha256=None)  # its own weights
        if data_root:
            raw["data"] = {**(raw.get("data") or {}), "root": str(Path(data_root).resolve())}
        return TrialConfig.model_validate(raw)
    except (yaml.YAMLError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        reason = str(e).splitlines()[0] if not isinstance(e, ValidationError) else explain(e, raw)
        raise UserError(f"{folder / 'config.yaml'} is not an export's config ({reason})") from None


def load_export_weights(model: torch.nn.Module, folder: str | Path) -> None:
    """An export's model.safetensors into `model`; UserError for a file that is not the weights of its config."""
    file = Path(folder) / "model.safetensors"
    try:
        load_model(model, str(file))
    except Exception as e:  # noqa: BLE001 - safetensors' own errors: not a safetensors file, other tensors
        raise UserError(f"{file} does not hold the weights of the model its config.yaml describes "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:150]})") from None


def load_export(folder: str | Path) -> tuple[TrialConfig, torch.nn.Module]:
    """The config and the model of an export (on the CPU, in eval mode)."""
    from trainables.models import build_model  # timm: imported when a model is built

    config = export_config(folder)
    model = build_model(config.model, data.num_outputs(config.task, config.model.age_head))
    load_export_weights(model, folder)
    return config, model.eval()


def evaluate_export(folder: str | Path, data_root: str | None = None) -> dict:
    """Score an export on the validation persons of its own split: the metrics its study reported."""
    from trainables.trial import Trial

    trial = Trial(export_config(folder, data_root))
    load_export_weights(trial.scored_model, folder)
    return trial.evaluate()


def log_export(study: str, out: Path, config: TrialConfig, uri: str, trial_id: str) -> None:
    """Attach the export to the best trial's MLflow run and register the model under the study's name."""
    import mlflow

    from tune import tracking

    client = tracking.connect(uri)
    parent = tracking.find_study_run(client, study)
    run_id = parent
    if parent is not None:
        found = tracking.trial_runs(client, parent, trial_id)
        run_id = found[0].info.run_id if found else parent
    if run_id is None:
        print(f"note: study {study!r} has no MLflow run in {uri}; the export is not logged there")
        return
    client.log_artifacts(run_id, str(out), "export")
    _, model = load_export(out)
    previous = os.environ.get("MLFLOW_TRACKING_URI")  # MLflow's global URI is an environment variable too
    mlflow.set_tracking_uri(uri)
    example = np.zeros((2, 3, config.model.image_size, config.model.image_size), np.float32)
    # MLflow saves the model as a torch.export graph: it needs torch alone (MLflow's defaults name it), and naming
    # the requirements spares the process MLflow would start to infer them (8 CPU-s). Untraceable: unregistered.
    requirements = mlflow.pytorch.get_default_pip_requirements()
    try:
        with mlflow.start_run(run_id=run_id):
            mlflow.pytorch.log_model(model, name="model", registered_model_name=study, input_example=example,
                                     pip_requirements=requirements)
    except Exception as e:  # noqa: BLE001 - the export on disk is complete either way
        print(f"note: the model was not registered in MLflow ({type(e).__name__}: {str(e).splitlines()[0]})")
    finally:  # what this process starts later (a study, in tests) must not inherit this store
        mlflow.set_tracking_uri(previous)
    client.set_tag(parent, "tune.exported_trial_id", trial_id)

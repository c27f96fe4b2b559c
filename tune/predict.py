"""From exports to the competition's 18 classes: predict an eval set (`tune predict`) or score labeled persons
(`tune evaluate`).

The models may be one 18-class (`all`) or `multi` export, or any mix of mask, gender and age exports, several
per task. Each model's outputs are read as per-task probabilities in the competition's classes
(`trainables.outputs.task_probabilities`); with `--tta flip` the model's raw outputs of the photo and of its
mirror image are averaged first; per task, the models' probabilities are averaged (`--vote soft`) or their
predicted classes counted (`--vote hard`, ties to the higher mean probability); the three tasks' classes
compose the 18-class id.
Photos are decoded through the same cache as training (`trainables.cache`), at each model's own size.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from trainables import cache, data, memory, outputs
from trainables.config import DataConfig, TrialConfig, UserError
from trainables.loader import CachedPhotos, DecodedPhotos, eval_loader
from trainables.loop import Device, pick_device, predict
from trainables.metrics import per_class_report
from trainables.transforms import eval_transform
from tune.ensemble import members as ensemble_members
from tune.export import export_split, load_export
from tune.score import format_score, scores

TASKS = tuple(data.HEADS)  # mask, gender, age


@dataclass
class Model:
    folder: str
    cfg: TrialConfig
    net: torch.nn.Module
    weight: float = 1.0  # its share of the vote: an ensemble export's members have their chosen weights

    @property
    def tasks(self) -> tuple[str, ...]:
        return TASKS if self.cfg.task in ("all", "multi") else (self.cfg.task,)


def load_models(folders: list[str]) -> list[Model]:
    """The exports (an ensemble export: its members), checked to cover mask, gender and age between them."""
    memory.keep_freed_memory()  # every batch's activations reused, not faulted in again: twice as fast on a CPU
    models = []
    for folder in folders:
        for member, weight in ensemble_members(folder) or [(folder, 1.0)]:
            models.append(Model(str(member), *load_export(member), weight=weight))
    covered = {task for model in models for task in model.tasks}
    missing = [task for task in TASKS if task not in covered]
    if missing:
        given = ", ".join(f"{m.folder} ({m.cfg.task})" for m in models)
        raise UserError(f"the models do not cover {' and '.join(missing)}: add an export of that task, or an all "
                        f"or multi export (given: {given})")
    return models


def probabilities(model: Model, files: list[str], source: str, device: str, batch: int, flip: bool,
                  progress: bool) -> dict[str, np.ndarray]:
    """One model's per-task probabilities of the photos, in order."""
    cfg, size = model.cfg, model.cfg.model.image_size
    decoded, crop = cfg.augment.decoded_size(size), cfg.augment.center_crop
    workers = len(os.sched_getaffinity(0))
    index, no_labels = np.arange(len(files)), np.zeros(len(files), np.int64)
    if cfg.data.cache:
        images = cache.cached_images(files, decoded, crop, cache.cache_dir(cfg.data.cache_dir), source,
                                     workers=workers, progress=progress)
        photos = CachedPhotos(images, index, no_labels, eval_transform(cfg.augment, size))
    else:
        photos = DecodedPhotos(files, decoded, crop, no_labels, eval_transform(cfg.augment, size))
    from trainables.models import normalization  # timm: imported when a model is there to run

    dev = Device(device, *normalization(model.net), channels_last=cfg.model.channels_last)
    net = model.net.to(dev.device)
    if dev.channels_last:
        net = net.to(memory_format=torch.channels_last)
    raw, _, _ = predict(net, eval_loader(photos, batch, max(0, workers - 1), dev.cuda), dev, flip=flip,
                        progress=progress)
    return outputs.task_probabilities(cfg, raw)


def vote(per_model: list[dict[str, np.ndarray]], how: str = "soft",
         weights: list[float] | None = None) -> dict[str, np.ndarray]:
    """Each task's combined probabilities (soft: their weighted mean; hard: the weighted share of votes, ties to
    the mean)."""
    weights = weights or [1.0] * len(per_model)
    combined = {}
    for task in TASKS:
        given = [p[task] for p in per_model if task in p]
        w = [weight for p, weight in zip(per_model, weights, strict=True) if task in p]
        mean = np.average(given, axis=0, weights=w)
        if how == "hard":
            votes = np.average([np.eye(p.shape[1])[p.argmax(axis=1)] for p in given], axis=0, weights=w)
            combined[task] = votes + 1e-6 * mean
        else:
            combined[task] = mean
    return combined


def predict_classes(models: list[Model], files: list[str], source: str, device: str = "auto", batch: int = 128,
                    flip: bool = False, how: str = "soft", progress: bool = True) -> np.ndarray:
    """The 18-class ids of the photos, from all the models."""
    device = pick_device(device)
    per_model = []
    for model in models:
        if progress:
            print(f"{model.folder}: task {model.cfg.task}, {model.cfg.model.backbone} at "
                  f"{model.cfg.model.image_size} px", flush=True)
        per_model.append(probabilities(model, files, source, device, batch, flip, progress))
    return outputs.predicted_classes("all", vote(per_model, how, [m.weight for m in models]))


def eval_files(eval_dir: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """info.csv and the image file of each of its rows, checked."""
    folder = Path(eval_dir)
    info_csv = folder / "info.csv"
    if not info_csv.is_file():
        raise UserError(f"no info.csv in {folder} (expected the competition's eval/ folder)")
    try:
        info = pd.read_csv(info_csv, dtype={"ImageID": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{info_csv}: not a readable CSV ({str(e).splitlines()[0]})") from None
    if "ImageID" not in info.columns:
        raise UserError(f"{info_csv}: no ImageID column (has: {', '.join(map(str, info.columns))})")
    if info.empty:
        raise UserError(f"{info_csv}: no rows")
    if (info["ImageID"].str.strip() == "").any():
        raise UserError(f"{info_csv}, line {int((info['ImageID'].str.strip() == '').to_numpy().argmax()) + 2}: "
                        "empty ImageID")
    repeated = info["ImageID"].duplicated()
    if repeated.any():
        first = int(repeated.to_numpy().argmax())
        raise UserError(f"{info_csv}, line {first + 2}: ImageID {info['ImageID'].iloc[first]!r} appears more than "
                        f"once ({int(repeated.sum())} repeated row(s)): a submission has one row per photo")
    files = [str(folder / "images" / name) for name in info["ImageID"]]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise UserError(f"{len(missing)} image(s) of {info_csv} are missing, e.g. {missing[0]}")
    return info, files


def predict_submission(folders: list[str], eval_dir: str, out: str, device: str = "auto", batch: int = 128,
                       flip: bool = False, how: str = "soft") -> pd.DataFrame:
    """Write `out` as info.csv's ImageID with the predicted class in `ans`, in info.csv's order."""
    models = load_models(folders)
    info, files = eval_files(eval_dir)
    info = info.assign(ans=predict_classes(models, files, str(Path(eval_dir).resolve()), device, batch, flip, how))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    info[["ImageID", "ans"]].to_csv(out, index=False)
    return info


def persons_to_score(models: list[Model], table: pd.DataFrame, which: str) -> list[str]:
    """val: the persons every model validated on (none trained on them); all: every person, if no model
    trained on any of them."""
    present = set(table["person"])
    if which == "val":
        persons = set.intersection(*(set(export_split(m.folder)[1]) for m in models)) & present
        if not persons:
            raise UserError("the models share no validation persons in this data set (trained on other splits or "
                            "data): pass --persons all with persons none of them trained on")
        return sorted(persons)
    for model in models:
        seen = present & set(export_split(model.folder)[0])
        if seen:
            raise UserError(f"{model.folder} trained on {len(seen)} of these persons (e.g. {sorted(seen)[0]}): "
                            "score it on --persons val, or on data it did not see")
    return sorted(present)


def evaluate(folders: list[str], train_dir: str, which: str = "val", device: str = "auto", batch: int = 128,
             flip: bool = False, how: str = "soft", uri: str | None = None) -> dict:
    """Score the composed 18-class prediction on labeled persons, print it and log it to MLflow."""
    models = load_models(folders)
    table = data.read_table(train_dir)
    persons = persons_to_score(models, table, which)
    rows = table[table["person"].isin(persons)]
    pred = predict_classes(models, rows["file"].tolist(), str(Path(train_dir).resolve()), device, batch, flip, how)
    true = data.targets(rows, "all", DataConfig().score_age_bounds)
    result = {**scores(true, pred), "persons": len(persons)}
    print(f"{len(persons)} persons ({which}), {len(rows)} photos\n{format_score(result)}")
    if uri is not None:
        log_evaluation(uri, folders, train_dir, which, flip, how, result, true, pred)
    return result


def log_evaluation(uri: str, folders: list[str], train_dir: str, which: str, flip: bool, how: str, result: dict,
                   true: np.ndarray, pred: np.ndarray) -> None:
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    from tune import tracking
    from tune.figures import confusion_figure

    client = tracking.connect(uri)
    name = " + ".join(Path(f).name for f in folders)
    run = client.create_run(tracking.experiment_id(client, "evaluate"), run_name=name, tags={"tune.role": "evaluate"})
    run_id = run.info.run_id
    tracking.log_params(client, run_id, {"models": list(folders), "data": train_dir, "persons": which,
                                         "tta": "flip" if flip else "none", "vote": how})
    for key, value in result.items():
        client.log_metric(run_id, key, float(value))
    names = data.class_names("all")
    confusion = confusion_matrix(true, pred, labels=list(range(18))).tolist()
    client.log_figure(run_id, confusion_figure(confusion, names, f"macro F1 {result['f1']:.4f}"),
                      "confusion_matrix.png")
    plt.close("all")
    tracking.log_table(client, run_id, pd.DataFrame(per_class_report(confusion, names)), "per_class_report.json")
    client.set_terminated(run_id, "FINISHED")
    print(f"logged to MLflow: experiment evaluate, run {run_id}")

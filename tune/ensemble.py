"""Ensemble selection over a finished study (Caruana et al., ICML 2004): `tune export STUDY --ensemble`.

Every trial of a study validates on the same persons, and each checkpoint keeps that epoch's validation
outputs (`val_outputs.npy`). Starting from the best trial's best epoch, the selection adds the trial whose
outputs most raise the macro F1 of the averaged per-task probabilities (as `tune predict` averages them), each
trial once, and stops when no trial left raises it: the chosen trials weigh the same. Weights are not fitted to
the validation split, which is small: on 392 persons of the real faces, choosing with replacement mixed two
trials 2:1 for 0.007 more validation F1 (a rise that held on 13 of 25 bootstrap draws of those persons) and lost
0.015 on the 490 eval persons against the same two at 1:1 (docs/benchmarks.md, B = 40 minutes).
The export is a folder of member exports (`member-0`, ...) and `ensemble.json` (members, weights, the validation
F1 of the ensemble and of its best member), which `tune predict` and `tune evaluate` take as one model.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from trainables import data, outputs
from trainables.config import TrialConfig, UserError
from tune import storage
from tune.export import weights_held, write_export
from tune.outcomes import best_checkpoints
from tune.storage import Storage

MANIFEST = "ensemble.json"


def export_ensemble(study: str, out: Path, uri: str, metric: str = "val_f1", mode: str = "max",
                    max_steps: int = 25, store: Storage | None = None) -> dict:
    """Choose the ensemble of the study's trials, write it to `out`, log it to the study's MLflow run."""
    store = store or storage.resolve()
    candidates = [(store.local_path(checkpoint), metrics)
                  for checkpoint, metrics in best_checkpoints(study, metric, mode, store)]
    candidates = [(checkpoint, metrics) for checkpoint, metrics in candidates
                  if (checkpoint / "val_outputs.npy").is_file()]
    if not candidates:
        raise UserError(f"study {study!r} kept no validation outputs (made before ensembles): export one trial")
    configs = [TrialConfig.model_validate_json((c / "config.json").read_text()) for c, _ in candidates]
    first = configs[0]
    table = data.read_table(first.data.root, first.data.max_persons)
    split = data.split_persons(table, first.data)
    keep = [i for i, cfg in enumerate(configs) if cfg.task == first.task and _same_split(cfg, first, table, split)]
    candidates, configs = [candidates[i] for i in keep], [configs[i] for i in keep]
    truth = validation_truth(table, split, first.data.score_age_bounds)
    probabilities = [outputs.task_probabilities(cfg, np.load(c / "val_outputs.npy"))
                     for cfg, (c, _) in zip(configs, candidates, strict=True)]
    counts, f1, best_single = select(probabilities, truth, first.task, max_steps)

    out.mkdir(parents=True, exist_ok=True)
    members = []
    for i, count in enumerate(counts):
        if not count:
            continue
        checkpoint, metrics = candidates[i]
        folder = out / f"member-{len(members)}"
        folder.mkdir(exist_ok=True)
        shutil.copy2(checkpoint / "model.safetensors", folder / "model.safetensors")
        write_export(folder, configs[i], {**metrics, "study": study, "checkpoint": str(checkpoint)}, split)
        members.append({"folder": folder.name, "weight": count / sum(counts), "trial_id": metrics.get("ray_trial_id"),
                        "epoch": metrics.get("epoch"), "weights": weights_held(metrics), metric: metrics.get(metric)})
    manifest = {"study": study, "task": first.task, "members": members, "val_f1": f1, "best_member_val_f1": best_single,
                "candidates": len(candidates), "note": "validation macro F1 as tune evaluate scores it"}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    log_ensemble(study, out, manifest, uri)
    return manifest


def _same_split(cfg: TrialConfig, first: TrialConfig, table, split: tuple[list[str], list[str]]) -> bool:
    """Whether a trial validated on the first's persons, in the same order (its searched values left no mark)."""
    if cfg.data == first.data:
        return True
    same_table = (cfg.data.root, cfg.data.max_persons) == (first.data.root, first.data.max_persons)
    return (same_table and cfg.data.score_age_bounds == first.data.score_age_bounds
            and data.split_persons(table, cfg.data)[1] == split[1])


def validation_truth(table, split: tuple[list[str], list[str]], score_age_bounds) -> np.ndarray:
    """The 18-class truth of the validation photos, in the order a trial validates them (`Trial.val_truth`)."""
    table = table[table["person"].isin(set(split[0]) | set(split[1]))]
    rows = table[~table["person"].isin(split[0]).to_numpy()]
    return data.targets(rows, "all", score_age_bounds)


def score(probabilities: dict[str, np.ndarray], truth18: np.ndarray, task: str) -> float:
    """Macro F1 (scikit-learn's, as `tune evaluate` and the competition) of averaged per-task probabilities."""
    if task in ("all", "multi"):
        pred, true = outputs.predicted_classes("all", probabilities), truth18
    else:
        pred, true = probabilities[task].argmax(axis=1), data.decompose18(truth18)[list(data.HEADS).index(task)]
    from sklearn.metrics import f1_score  # imported when scoring: it takes a second

    return float(f1_score(true, pred, average="macro", zero_division=0))


def select(probabilities: list[dict[str, np.ndarray]], truth18: np.ndarray, task: str,
           max_steps: int) -> tuple[list[int], float, float]:
    """Greedy forward selection, each model at most once: whether each model is chosen (1 or 0), the ensemble's F1
    and the best single model's."""
    singles = [score(p, truth18, task) for p in probabilities]
    counts = [0] * len(probabilities)
    counts[int(np.argmax(singles))] = 1
    total = {k: v.copy() for k, v in probabilities[int(np.argmax(singles))].items()}
    best = max(singles)
    for _ in range(max_steps - 1):
        n = sum(counts)
        trials = [score({k: (total[k] + p[k]) / (n + 1) for k in total}, truth18, task) if not counts[j] else -1.0
                  for j, p in enumerate(probabilities)]
        i = int(np.argmax(trials))
        if trials[i] <= best:
            break
        best, counts[i] = trials[i], counts[i] + 1
        total = {k: total[k] + probabilities[i][k] for k in total}
    return counts, best, max(singles)


def members(folder: str | Path) -> list[tuple[Path, float]] | None:
    """An ensemble export's member folders and weights; None for a single export."""
    manifest = Path(folder) / MANIFEST
    if not manifest.is_file():
        return None
    return [(Path(folder) / m["folder"], m["weight"]) for m in json.loads(manifest.read_text())["members"]]


def log_ensemble(study: str, out: Path, manifest: dict, uri: str) -> None:
    """The ensemble on the study's parent run: its manifest and export as artifacts, its F1 as a metric."""
    from tune import tracking

    client = tracking.connect(uri)
    parent = tracking.find_study_run(client, study)
    if parent is None:
        print(f"note: study {study!r} has no MLflow run in {uri}; the ensemble is not logged there")
        return
    client.log_artifacts(parent, str(out), "ensemble")
    client.log_metric(parent, "ensemble_val_f1", manifest["val_f1"])
    client.set_tag(parent, "tune.ensemble", ", ".join(f"{m['trial_id']} x{m['weight']:.2f}"
                                                      for m in manifest["members"]))

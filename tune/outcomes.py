"""What became of a study's trials, decided in one place, and which checkpoints are their best.

Every part that shows or uses an outcome asks here: the tracker (each trial run's tag `tune.outcome`), the
live view, the searcher (what it tells Optuna), the summary, the export and the ensembles. The rules read what a
trial reported (Ray's last result, or a checkpoint's metrics.json), never Ray itself, so the commands that turn
a study into a submission need no Ray.

- failed: it reported its own error (`TRIAL_ERROR`), or its process died more often than Ray retries it;
- finished: its last epoch reached its schedule (`planned_epochs`, which a time budget may have shortened);
- cut: still training when the time budget ended (afterwards a marker file, `CUT_MARKER`, in its folder says so);
- stopped_early: ASHA stopped it before its last epoch.

(An Optuna trial that the searcher proposed and that never ran, because its driver was killed, is an orphan: it
is not a trial of the study; `tune.search.optuna_store` keeps them apart.)
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from trainables.config import TRIAL_ERROR, UserError
from tune import storage
from tune.storage import Storage

FINISHED, STOPPED_EARLY, CUT, FAILED = "finished", "stopped_early", "cut", "failed"
CUT_MARKER = "cut_by_time_budget.txt"  # in a trial's folder: the time budget ended it before its last epoch


def planned_epochs(result: dict | None, config: dict, epochs: int) -> int:
    """A trial's schedule: as it last reported it (it re-plans itself within a time budget), else its own config's
    (the searcher shortened it at its start), else the study's `epochs`."""
    return (result or {}).get("planned_epochs") or config.get("train.epochs", epochs)


def decide(result: dict | None, planned: int, errored: bool = False, budget_over: bool = False) -> str:
    """The outcome of a trial that ended with `result` (its last) on a schedule of `planned` epochs; `errored`:
    its process died for good; `budget_over`: the time budget had ended when it did."""
    result = result or {}
    if errored or TRIAL_ERROR in result:
        return FAILED
    if result.get("epoch", 0) >= planned:
        return FINISHED
    return CUT if budget_over else STOPPED_EARLY


def of_trial(trial, epochs: int, deadline: float | None = None) -> str:
    """The outcome of a Ray trial (its status, last result and config) in a study of `epochs` epochs whose time
    budget ends at `deadline` (time.time())."""
    result = trial.last_result or {}
    return decide(result, planned_epochs(result, trial.config, epochs), trial.status == "ERROR",
                  deadline is not None and time.time() >= deadline)


def error_text(trial) -> str | None:
    """A failed Ray trial's traceback: the one it reported, else Ray's local error file (not yet in storage)."""
    if TRIAL_ERROR in (trial.last_result or {}):
        return trial.last_result[TRIAL_ERROR]
    local = Path(trial.error_file) if getattr(trial, "error_file", None) else None
    if local is not None and local.is_file():
        return local.read_text()
    return trial.get_error()


def best_checkpoint(study: str, metric: str, mode: str, store: Storage | None = None) -> tuple[Path, dict]:
    """The checkpoint folder of the study's best epoch over all trials (on this machine), and its metrics."""
    store = store or storage.resolve()
    path, metrics = best_checkpoints(study, metric, mode, store)[0]
    return store.local_path(path), metrics


def best_checkpoints(study: str, metric: str, mode: str, store: Storage | None = None) -> list[tuple[str, dict]]:
    """Each trial's best kept checkpoint folder (a path on the storage's filesystem) and its metrics, the best
    trial first. Trials the time budget cut are left out; so are the trials ASHA stopped early, where any trial
    finished (Ray always keeps a trial's last checkpoint, so its epoch tells how far the trial got)."""
    store = store or storage.resolve()
    folder = store.study(study)
    if not store.exists(folder):
        raise UserError(f"no study named {study!r} in {store.shown}")
    files = store.files(folder)
    cut = {f.rsplit("/", 1)[0] for f in files if f.endswith(f"/{CUT_MARKER}")}
    best: dict[str, tuple[float, str, dict]] = {}
    last: dict[str, dict] = {}  # trial -> the metrics of its last kept epoch
    for metrics_file in files:
        checkpoint, _, name = metrics_file.rpartition("/")
        trial = checkpoint.rpartition("/")[0]
        if name != "metrics.json" or not checkpoint.rpartition("/")[2].startswith("checkpoint_") or trial in cut:
            continue  # a trial cut half-trained by the time budget is never the best
        metrics = json.loads(store.read_text(metrics_file))
        if metrics.get("epoch", 0) >= last.get(trial, {}).get("epoch", 0):
            last[trial] = metrics
        value = metrics.get(metric)
        if value is not None and (trial not in best or (value > best[trial][0]) == (mode == "max")):
            best[trial] = (value, checkpoint, metrics)
    if not best and cut:
        raise UserError(f"study {study!r}: the time budget cut all its {len(cut)} trials with a result before their "
                        "last epoch (none is exported): give it a longer --time-budget")
    if not best:
        raise UserError(f"study {study!r} has no checkpoint with {metric} yet")
    # a checkpoint from before trials reported their schedule is taken as its trial's last epoch
    finished = {t for t in best if decide(last[t], planned_epochs(last[t], {}, last[t].get("epoch", 0))) == FINISHED}
    ranked = sorted((b for t, b in best.items() if t in finished or not finished), key=lambda s: s[0],
                    reverse=mode == "max")
    return [(checkpoint, metrics) for _, checkpoint, metrics in ranked]

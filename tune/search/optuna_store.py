"""The study's Optuna study, in SQLite beside MLflow's store: what the searcher knows of every earlier trial.

It lets a study grow (a new round's searcher reads it) and optuna-dashboard show it
(`optuna-dashboard sqlite:///mlruns/optuna.db`). Trials the searcher proposed that never ran (their driver was
killed: orphans) are closed and listed in the study's user attribute `tune.orphans`, and never counted.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna

OPTUNA_DB = Path("mlruns") / "optuna.db"
ORPHANS = "tune.orphans"  # the study's user attribute: the numbers of its orphan trials
ORPHAN = "tune.orphan"  # the trial user attribute that marked an orphan before studies listed them


def optuna_storage() -> optuna.storages.RDBStorage:
    OPTUNA_DB.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{OPTUNA_DB.resolve()}")


def load(name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=optuna_storage())


def trial_states(name: str) -> Counter:
    """How many trials of the study `name` Optuna holds in each state (COMPLETE, FAIL, RUNNING, ...)."""
    if not OPTUNA_DB.is_file() or name not in {s.study_name for s in optuna.get_all_study_summaries(optuna_storage())}:
        return Counter()
    study = load(name)
    orphans = set(study.user_attrs.get(ORPHANS, []))
    return Counter(t.state.name for t in study.get_trials(deepcopy=False)
                   if t.number not in orphans and ORPHAN not in t.user_attrs)


def trials_done(name: str, states: Counter | None = None) -> int:
    """Trials of the study `name` that ended: finished (COMPLETE), failed (FAIL), or stopped before their last
    epoch by ASHA or the time budget (PRUNED: Optuna ranks them below every finished trial, by their last epoch)."""
    states = trial_states(name) if states is None else states
    return states["COMPLETE"] + states["FAIL"] + states["PRUNED"]


def prune_unended(name: str) -> None:
    """Tell Optuna that the trials Ray's time limit stopped were stopped (Ray tells its searcher nothing of them)."""
    study = load(name)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)


def close_orphans(name: str) -> None:
    """After an interrupted round is finished: the Optuna trials still RUNNING were proposed after Ray last saved
    the searcher (its driver was killed) and never ran. They are closed as FAIL, listed, and not counted."""
    study = load(name)
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if running:
        study.set_user_attr(ORPHANS, sorted({*study.user_attrs.get(ORPHANS, []), *(t.number for t in running)}))
    for trial in running:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def forget(name: str) -> None:
    """Delete the Optuna study `name` (a new study of a name used before starts anew)."""
    if trial_states(name):
        optuna.delete_study(study_name=name, storage=optuna_storage())

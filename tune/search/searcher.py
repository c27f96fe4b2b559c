"""What the study tries next and what it stops: Optuna's sampler in Ray's searcher, and ASHA.

A new study's first trial is its fixed values (its prior), and ASHA never stops it early, so the search is never
worse than its best guess trained to its end. With a time budget, the searcher starts no trial that would not
reach its last epoch before the budget ends (`StudySearch`), and ASHA stops no trial whose slot no trial could
then use as well (`PriorToTheEnd`).
"""
from __future__ import annotations

import time
from collections.abc import Callable

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from trainables.config import TRIAL_ERROR
from tune import outcomes, space
from tune.config import StudyConfig
from tune.plan import Plan
from tune.search import private
from tune.search.optuna_store import optuna_storage


def searcher(study: StudyConfig, nodes: list, done: int = 0, deadline: float | None = None,
             plan: Plan | None = None, say: Callable[[str], None] = print) -> OptunaSearch:
    """Optuna's sampler in Ray's searcher, over the study's Optuna study (which holds the `done` trials before).
    A new study's first trial is its fixed values (its prior), so the search is never worse than its best guess.
    With a `deadline` (time.time()), it starts no trial that would not reach its last epoch before it, judged
    first by the `plan`'s measured pace, then by the trials' own; `say` tells the person why it stops."""
    seed, startup = study.search.seed + done, study.search.startup_trials  # a grown study draws new random points
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup,
                                                      warn_independent_sampling=False),
    }
    prior = study_prior(study, nodes, done)
    search = StudySearch(space=space.SpaceSampler(nodes), metric=study.search.metric, mode=study.mode,
                         sampler=samplers[study.search.algorithm](), storage=optuna_storage(), study_name=study.name,
                         points_to_evaluate=[prior] if prior else None)
    search.plan(study.scheduler.max_t, deadline, plan, say)
    return search

def study_prior(study: StudyConfig, nodes: list, done: int) -> dict | None:
    """A new study's first trial: its fixed values as a point of its space (None when it grows, or has no space)."""
    return (space.prior_point(nodes, study.trial_defaults()) or None) if not done and nodes else None

class StudySearch(OptunaSearch):
    """Ray's Optuna searcher, corrected in what it tells Optuna, and planning a time budget.

    - A trial that failed by itself (it reported its error and ended, to escape Ray's retries) is FAIL, not a
      COMPLETE trial without a value.
    - A trial stopped before its last epoch (by ASHA, or cut by the time budget) is PRUNED, not COMPLETE: Ray's
      searcher would give TPE its epoch-2 score as if it were a finished trial's. Optuna ranks PRUNED trials
      below the finished ones, by the epoch they reached and their last score there.
    - A trial Optuna holds as ended already is not told again: a study whose driver was killed is restored from
      Ray's last saved state, which can be behind the Optuna store, so a trial that ended after it runs again.
    - With a deadline, no trial starts that would not reach its last epoch before it: a full trial's time is
      the slowest pace seen so far (seconds per epoch since its start, start-up included) times the epochs. When a
      full trial no longer fits but one of at least half its epochs does, that shorter trial starts instead
      (`train.epochs` set in its config: its schedule ends at its own last epoch), so the budget is used to its end.
    """

    max_epochs: int | None = None  # class defaults: a searcher saved before these existed is restored without them
    deadline: float | None = None
    start_s: float = 0.0  # a trial's start (Ray's included): the plan's measure, then the trials' own
    say: Callable[[str], None] = print

    def plan(self, max_epochs: int, deadline: float | None, plan: Plan | None = None,
             say: Callable[[str], None] = print) -> None:
        self.max_epochs, self.deadline, self.say = max_epochs, deadline, say
        self.pace: dict[str, float] = {}  # Ray trial id -> seconds per epoch since the trial started
        if plan is not None:  # before any trial reports: the pace measured for the plan, over a whole trial
            self.pace["measured"] = (plan.pace.trial_s(max_epochs) - plan.pace.start_s) / max_epochs  # its warm-up
            self.start_s = plan.pace.start_s
        self.epochs: dict[str, int] = {}  # Ray trial id -> its epochs, where the budget shortened it
        self.suggested: dict[str, float] = {}  # Ray trial id -> when it was proposed (time.time())
        self.refused: str | None = None  # why the last trial was not started

    def trial_seconds(self) -> float | None:
        """What a new trial is expected to take to its last epoch (None: no pace measured or reported yet)."""
        return max(self.pace.values()) * self.max_epochs + self.start_s if self.pace else None

    def epochs_that_fit(self) -> int | None:
        """The epochs a trial started now would reach before the deadline, at the slowest pace seen (None: no
        deadline, or no pace measured or reported yet)."""
        if self.deadline is None or not self.pace:
            return None
        return int((self.deadline - time.time() - self.start_s) / max(self.pace.values()))

    def suggest(self, trial_id: str):
        needed = self.trial_seconds() if self.deadline is not None else None
        self.suggested[trial_id] = time.time()
        if needed is None or time.time() + needed <= self.deadline:
            return super().suggest(trial_id)
        left = self.deadline - time.time()
        fits = self.epochs_that_fit()
        if fits < max(1, (self.max_epochs + 1) // 2):
            self.refused = f"a trial takes about {needed:.0f} s and {max(0.0, left):.0f} s of the time budget are left"
            self.say(f"no more trials: {self.refused}")
            return Searcher.FINISHED
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            config["train.epochs"] = self.epochs[trial_id] = fits
        return config

    def ended_in_optuna(self, trial_id: str) -> bool:
        """Whether Optuna holds the trial as ended already: a study whose driver was killed is restored from Ray's
        last saved state, which can be behind the Optuna store (a trial that ended after it is run again)."""
        trial = private.optuna_trial(self, trial_id)
        return trial is not None and trial.state.is_finished()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if TRIAL_ERROR in result or self.ended_in_optuna(trial_id):
            return
        if self.deadline is not None and result.get("epoch"):
            self.pace[trial_id] = result["time_total_s"] / result["epoch"]
            proposed = getattr(self, "suggested", {}).pop(trial_id, None)  # its first result in this process
            if proposed is not None and result.get("training_iteration") == 1:
                # Ray's own start of a trial (its process), which its clock does not see; a trial queued for
                # resources waited too, so no more than a trial's own start-up counts
                waited = time.time() - proposed - result["time_total_s"]
                self.start_s = max(self.start_s, min(waited, result["time_total_s"]))
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self.ended_in_optuna(trial_id):
            private.forget_trial(self, trial_id)
            return
        if result and TRIAL_ERROR in result:
            result, error = None, True
        elif self.max_epochs and result and outcomes.decide(result, outcomes.planned_epochs(
                result, {}, self.epochs.get(trial_id, self.max_epochs))) != outcomes.FINISHED:
            result = None  # stopped early, or cut
        super().on_trial_complete(trial_id, result, error)

class PriorToTheEnd(ASHAScheduler):
    """ASHA, except where a stop would lose more than it frees:

    - the study's prior (its fixed values, a new study's first trial) is never stopped early: the study then always
      holds its best guess trained to its last epoch, and the search is never worse than it;
    - within a time budget, a trial is stopped only when a trial started in its place could still train as many
      epochs as its own schedule before the budget ends (the study's searcher knows the pace and the deadline).
      Otherwise its slot would go to a shorter schedule, or to nothing: a budget planned so that each slot holds
      about one full trial keeps the trials it started, and ASHA's stops are for the trials a longer budget holds.
    """

    say: Callable[[str], None] = print  # a class default: a scheduler saved before it existed is restored without it

    def __init__(self, prior: dict | None = None, *, time_attr: str, max_t: int,
                 say: Callable[[str], None] = print, **kwargs):
        super().__init__(time_attr=time_attr, max_t=max_t, **kwargs)
        self.prior, self.time_attr, self.max_t, self.say = prior, time_attr, max_t, say

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action != self.STOP or result.get(self.time_attr, 0) >= self.max_t:
            return action
        if self.is_prior(trial.config):
            return self.CONTINUE  # (ASHA's count of stopped trials, in its debug line, counts it all the same)
        own = outcomes.planned_epochs(result, trial.config, self.max_t)
        search = budget_searcher(tune_controller)
        fits = search.epochs_that_fit() if search else None
        if fits is not None and fits < own:
            self.say(f"kept from ASHA's stop at epoch {result.get('epoch')}: a trial started in its place would reach "
                     f"{max(fits, 0)} of its {own} epochs before the time budget ends  (trial {trial.trial_id})")
            return self.CONTINUE
        return action

    def is_prior(self, config: dict) -> bool:
        return bool(self.prior) and all(space.plain(config.get(k)) == v for k, v in self.prior.items())

def budget_searcher(tune_controller) -> StudySearch | None:
    """The study's searcher behind Ray's wrappers of it (SearchGenerator, ConcurrencyLimiter), where it plans a
    time budget (None otherwise)."""
    search = getattr(tune_controller, "search_alg", None)
    while search is not None and not isinstance(search, StudySearch):
        search = getattr(search, "searcher", None)
    return search if search is not None and search.deadline is not None else None

def scheduler(study: StudyConfig, prior: dict | None = None, say: Callable[[str], None] = print):
    s = study.scheduler
    if s.name == "fifo":
        return FIFOScheduler()
    return PriorToTheEnd(prior, time_attr="training_iteration", max_t=s.max_t, say=say,
                         grace_period=min(s.grace_period, s.max_t), reduction_factor=s.reduction_factor)

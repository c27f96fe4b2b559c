"""The only uses of Ray's and Optuna's private parts, where no public API does the job.

Each one breaks silently when Ray or Optuna changes underneath it, so each is here, used through these functions
alone, and `tests/test_private_apis.py` fails loudly when one of them is no longer there.

- Ray prints the raylet's messages (a worker died, ...) to the driver's stdout through
  `ray._private.worker.print_to_stdstream`, with no switch to turn it off (`log_to_driver=False` silences the
  workers' output, not these): `redirect_raylet_messages` sends them to a logger for the study's run, and puts
  Ray's function back afterwards.
- `ray.init` starts a log monitor (which tails every worker's log files ten times a second, for the driver to
  print) and an autoscaler monitor on a Ray of its own, with no switch to leave them out; a study on one
  machine that does not print its workers' output needs neither: `lean_local_ray` starts it without them, as
  `ray.cluster_utils` does through the same parameters.
- Ray Tune's loop waits at most 0.1 s for an event before it goes round again (`TuneController.step`): ten
  rounds a second of callbacks and checks while nothing happens, most of the driver's CPU while trials train
  (py-spy). `patient_tune_loop` lets it wait up to a second; an event still ends the wait at once.
- Ray's `OptunaSearch` keeps which Optuna trial each Ray trial is (`_ot_trials`) and its Optuna study
  (`_ot_study`) to itself: `optuna_trial` reads them.
"""
from __future__ import annotations

import contextlib
import logging

import optuna
import ray._private.parameter as ray_parameter
import ray._private.worker as ray_worker
from ray.air.execution._internal.actor_manager import RayActorManager
from ray.tune.search.optuna import OptunaSearch


@contextlib.contextmanager
def redirect_raylet_messages(logger: logging.Logger):
    """While inside: the raylet's messages Ray would print to stdout go to `logger` instead."""
    printed = ray_worker.print_to_stdstream
    ray_worker.print_to_stdstream = lambda data, ignore_prefix: logger.warning(
        "(%s) %s", data.get("pid"), "\n".join(data.get("lines", [])))
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = printed


@contextlib.contextmanager
def lean_local_ray():
    """While inside: a Ray that `ray.init` starts on this machine starts no log monitor and no autoscaler
    monitor (its workers' output then stays in their log files, under Ray's session folder)."""
    init = ray_parameter.RayParams.__init__

    def lean(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.include_log_monitor, self.no_monitor = False, True

    ray_parameter.RayParams.__init__ = lean
    try:
        yield
    finally:
        ray_parameter.RayParams.__init__ = init


@contextlib.contextmanager
def patient_tune_loop(wait_s: float = 1.0):
    """While inside: Ray Tune's loop waits up to `wait_s` for its next event (Ray's own wait: 0.1 s)."""
    wait = RayActorManager.next

    def patient(self, timeout=None):
        return wait(self, timeout if timeout is None else max(timeout, wait_s))

    RayActorManager.next = patient
    try:
        yield
    finally:
        RayActorManager.next = wait


def optuna_trial(search: OptunaSearch, trial_id: str) -> optuna.trial.FrozenTrial | None:
    """The Optuna trial (as the Optuna store holds it now) that the searcher proposed as Ray's `trial_id`."""
    trial = search._ot_trials.get(trial_id)
    if trial is None:
        return None
    return search._ot_study.get_trials(deepcopy=False)[trial.number]


def forget_trial(search: OptunaSearch, trial_id: str) -> None:
    """Make the searcher forget Ray's `trial_id` without telling Optuna anything of it."""
    search._ot_trials.pop(trial_id, None)

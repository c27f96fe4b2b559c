"""The only uses of Ray's and Optuna's private parts, where no public API does the job.

Each one breaks silently when Ray or Optuna changes underneath it, so each is here, used through these functions
alone, and `tests/test_private_apis.py` fails loudly when one of them is no longer there.

- Ray prints the raylet's messages (a worker died, ...) to the driver's stdout through
  `ray._private.worker.print_to_stdstream`, with no switch to turn it off (`log_to_driver=False` silences the
  workers' output, not these): `redirect_raylet_messages` sends them to a logger for the study's run, and puts
  Ray's function back afterwards.
- Ray's `OptunaSearch` keeps which Optuna trial each Ray trial is (`_ot_trials`) and its Optuna study
  (`_ot_study`) to itself: `optuna_trial` reads them.
"""
from __future__ import annotations

import contextlib
import logging

import optuna
import ray._private.worker as ray_worker
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


def optuna_trial(search: OptunaSearch, trial_id: str) -> optuna.trial.FrozenTrial | None:
    """The Optuna trial (as the Optuna store holds it now) that the searcher proposed as Ray's `trial_id`."""
    trial = search._ot_trials.get(trial_id)
    if trial is None:
        return None
    return search._ot_study.get_trials(deepcopy=False)[trial.number]


def forget_trial(search: OptunaSearch, trial_id: str) -> None:
    """Make the searcher forget Ray's `trial_id` without telling Optuna anything of it."""
    search._ot_trials.pop(trial_id, None)

"""`tune run`: a study from its checks to its summary, one round of trials after another.

    checks (`checks`) -> the time budget's pace (`tune.plan`, measured before Ray starts) -> Ray (`ray_setup`)
    -> the stores (MLflow, Optuna) -> the budget's plan
    -> rounds of trials: Optuna proposes (`searcher`), ASHA stops the weak, each trial trains
       (`trainables.trainable.train_trial`), `StudyTracker` writes it to MLflow, `LiveView` shows it
    -> the summary: the study's best epoch over every round (`tune.outcomes`)

A new study is one round. `--resume` first finishes an interrupted round (Ray restores it), then, when the
study has fewer trials than `num_samples`, runs a new round for the rest, whose searcher reads the Optuna study
and so chooses knowing every earlier trial.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable

import ray
import requests
import yaml
from mlflow.exceptions import MlflowException
from ray import tune

from trainables.config import UserError
from trainables.trainable import train_trial
from tune import outcomes, space, tracking
from tune.config import StudyConfig
from tune.plan import Measured, Plan, apply, apply_params, plan_study
from tune.search import checks, live, optuna_store, private, ray_setup, rungs
from tune.search.optuna_store import trial_states, trials_done
from tune.search.ray_setup import LOG_DIR
from tune.search.searcher import scheduler, searcher, study_prior
from tune.search.tracker import StudyTracker, drop_lost_runs
from tune.storage import Storage, resolve


def run(study: StudyConfig, where: str, uri: str, resume: bool = False, address: str | None = None,
        verbose: bool = False, started: float | None = None) -> int:
    """Check, plan and run `study` (read from the file `where`), then print its summary; the exit code.
    `started` (time.time()): when the command started, which the time budget counts from."""
    started = started or time.time()
    tracking.check_server(uri)  # a server down at the start is a mistake, not an outage
    if address:
        checks.check_address(address)
    store = resolve(study.storage)
    checks.check_name(study.name, resume, store)
    quiet = contextlib.nullcontext() if verbose else private.redirect_raylet_messages(logging.getLogger("ray"))
    with quiet, private.patient_tune_loop(), stopping_ray():
        if address:  # a cluster: refused before anything runs when its nodes cannot reach the storage
            start_ray(study, store, address, verbose)
        nodes = checks.check_study(study, where, cluster=bool(address))
        if address:
            checks.check_nodes(study, nodes)
        planner = None
        if study.search.time_budget_s and not resume:  # a resumed study's trials keep the plan they were given
            planner = budget_planner(study, store, address, verbose, started + study.search.time_budget_s)
        elif resume:  # the plan it was run with, if any: restored trials and a new round keep it
            apply_params(tracking.study_params(study.name, uri), study)
        run_study(study, nodes, uri, store, resume, address, verbose, started, planner)
        # printed before Ray stops: Ray's own shutdown crashed a driver once (SIGSEGV in its io thread, after a
        # cluster had lost a node), and the person still learns how the study ended
        return summarize(study, store)


@contextlib.contextmanager
def stopping_ray():
    """Ray, once started (by the budget's plan, the cluster's checks or the study), stops whichever way the command
    ends: a refusal after Ray started included."""
    try:
        yield
    finally:
        ray.shutdown()


def budget_planner(study: StudyConfig, store: Storage, address: str | None, verbose: bool, deadline: float
                   ) -> Callable[[], Plan]:
    """Measure what the time budget's plan needs, and return what makes it (and applies it to `study`) once the
    study's stores are ready, right before its trials start, so that the seconds it plans are the trials' own.

    The pace of an epoch is measured before Ray starts (on a quiet machine: Ray's start keeps its cores busy for
    a while), or on a cluster's driver; what Ray adds to a trial's start is measured by a process of a trial's
    resources started now, while the stores are made (`ray_setup.TrialStart`)."""
    measured = Measured()
    if not address:
        plan_study(study, deadline - time.time(), measure_at=measured)  # refused here when not one epoch fits
        start_ray(study, store, address, verbose)
    cpus, gpus = ray_setup.cluster_resources()
    trial_start = ray_setup.TrialStart(study.resources.cpus_per_trial, study.resources.gpus_per_trial)

    def make() -> Plan:
        ray_start_s = trial_start.seconds(deadline - time.time())
        plan = plan_study(study, deadline - time.time(), cpus, measured, gpus, ray_start_s)
        apply(plan, study)
        return plan

    return make


def start_ray(study: StudyConfig, store: Storage, address: str | None, verbose: bool) -> None:
    if not verbose:
        ray_setup.quiet_logs(LOG_DIR / f"{study.name}.log")
    ray_setup.start_ray(store, address, verbose)
    if not verbose:  # ray.init takes the handlers off Ray's logger
        ray_setup.quiet_logs(LOG_DIR / f"{study.name}.log")


def summarize(study: StudyConfig, store: Storage) -> int:
    """Print the study's trials and its best epoch over every round; exit code 1 when no trial has a result."""
    states = trial_states(study.name)
    print(f"\nstudy {study.name}: {trials_done(study.name, states)} trials, {states['FAIL']} failed")
    try:
        checkpoint, metrics = outcomes.best_checkpoints(study.name, study.search.metric, study.mode, store)[0]
    except UserError as e:
        print(e)
        return 1
    metric = study.search.metric
    print(f"best trial {metrics.get('ray_trial_id')}: {metric} {metrics[metric]:.4f} at epoch {metrics['epoch']}")
    params = checkpoint.rpartition("/")[0] + "/params.json"
    for key, value in sorted(json.loads(store.read_text(params)).items() if store.exists(params) else []):
        print(f"  {key} = {value}")
    print(f"export it with: tune export {study.name}")
    return 0


def settings(study: StudyConfig, store: Storage) -> dict:
    return {"search": study.search.model_dump(), "scheduler": study.scheduler.model_dump(),
            "resources": study.resources.model_dump(), "storage": store.shown}


def run_study(study: StudyConfig, nodes: list, uri: str, store: Storage, resume: bool = False,
              address: str | None = None, verbose: bool = False, started: float | None = None,
              planner: Callable[[], Plan] | None = None):
    """Run the study to `search.num_samples` trials and return Ray's ResultGrid of its last round.

    With `search.time_budget_s`, the study ends that long after `started` (time.time(), default now: the
    command's start, so that checking and caching the data count): no trial starts that would not finish before
    then (`StudySearch`), a running trial re-plans its schedule to end before then, and a trial still running
    then is cut, marked so, and never exported. `planner` makes the budget's plan (`budget_planner`), once the
    stores are ready; the plan is recorded on the study's parent run.
    """
    path = store.study(study.name)
    if not verbose:
        ray_setup.quiet_logs(LOG_DIR / f"{study.name}.log")
    client = tracking.connect(uri)
    if not resume:  # a new study of a name used before (its Ray folder removed) starts its Optuna study anew
        optuna_store.forget(study.name)
    plan = planner() if planner else None  # after the stores' set-up (their tables): the trials' seconds
    parent = tracking.find_study_run(client, study.name) if resume else None
    if parent is None:
        resolved = yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False)
        parent = tracking.start_study_run(client, study.name, resolved, space.describe(nodes),
                                          settings(study, store) | (plan.params() if plan else {}))
    # from here on a tracking server that does not answer holds the study back seconds, not minutes (the tracker
    # retries on its own); the calls above take MLflow's own patience: a server's first answers can be slow
    tracking.quiet_retries()
    unlogged = LOG_DIR / f"{study.name}.unlogged.json"  # what the tracking server did not take last time
    if unlogged.is_file():  # logged first on --resume; dropped by a new study of the same name
        tracker = StudyTracker(uri, study.name, parent, study.trial_base(), study.train.epochs, study.search.metric,
                               study.mode, unlogged=unlogged, say=live.say)
        tracker.load_unlogged()
        tracker.drain()
    states = trial_states(study.name) if resume else Counter()
    ended = trials_done(study.name, states)
    if resume and states and not states["RUNNING"] and ended >= study.search.num_samples:
        print(f"study {study.name} has all its {ended} trials: pass --num-samples N (more than {ended}) to add "
              "some")  # said before Ray starts: nothing to run
        return None
    client.update_run(parent, status="RUNNING")
    tracking.set_trials_view(client, client.get_run(parent).info.experiment_id, space.param_names(nodes),
                             study.search.metric, study.mode)
    search = study.search
    deadline = (started or time.time()) + search.time_budget_s if search.time_budget_s else None
    if plan is not None:
        print(plan.describe(), flush=True)
    at_once = f"{search.max_concurrent} at a time" if search.max_concurrent else "as resources allow"
    budget = f", within {live.duration(search.time_budget_s)}" if search.time_budget_s else ""
    print(f"study {study.name}: up to {search.num_samples} trials ({at_once}{budget}), {study.scheduler.name} "
          f"scheduler, {search.algorithm} search; "
          + ("Ray's output below" if verbose else f"logs in {LOG_DIR / study.name}.log"),
          flush=True)
    start_ray(study, store, address, verbose)
    trainable = tune.with_resources(tune.with_parameters(train_trial, base=study.trial_base(), end_by=deadline),
                                    {"cpu": study.resources.cpus_per_trial, "gpu": study.resources.gpus_per_trial})
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # a trial's failure report has no metric
    results = None
    # an interrupted round (trials that started and did not end), or a study from before the Optuna store
    if resume and (states["RUNNING"] or not states):
        print(f"study {study.name}: restoring its interrupted round ({trials_done(study.name, states)} trials "
              f"ended, {states['RUNNING']} were running) from {store.shown}", flush=True)
        view = live.LiveView(search.metric, study.mode, study.train.epochs, search.num_samples,
                             trials_done(study.name, states), None, earlier_best(study, store))
        results = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                     storage_filesystem=store.fs).fit()
        view.on_experiment_end([])
        if not round_ended(results):
            return results
        if not states:
            print(f"study {study.name} was made before studies kept their Optuna study: it cannot grow")
            return results
        optuna_store.close_orphans(study.name)
        try:
            drop_lost_runs(client, parent, {r.metrics.get("trial_id") for r in results})
        except (MlflowException, requests.RequestException):  # a tracking server down then: left as they are
            pass
    done = trials_done(study.name)
    if resume and done >= search.num_samples:
        print(f"study {study.name} has all its {done} trials: pass --num-samples N (more than {done}) to add some")
    if done < search.num_samples:
        if done:
            print(f"study {study.name} has {done} trials: {search.num_samples - done} more, chosen knowing them")
            rung = rungs.measured(client, parent) if study.scheduler.name == "asha" else None
            if rung:
                study.scheduler.grace_period = max(1, min(rung, study.scheduler.max_t - 1))
                print(f"first ASHA rung at epoch {study.scheduler.grace_period}: measured on the study's "
                      "finished trials (its parent run's rung_rho_*)")
        client.update_run(parent, status="RUNNING")
        tracker = StudyTracker(uri, study.name, parent, study.trial_base(), study.train.epochs, search.metric,
                               study.mode, deadline, unlogged, say=live.say, first=done + 1)
        view = live.LiveView(search.metric, study.mode, study.train.epochs, search.num_samples, done,
                             deadline, earlier_best(study, store))
        tuner = new_round(study, nodes, trainable, done, [tracker, view], verbose, deadline, store, plan)
        results = tuner.fit()
        if deadline is not None and time.time() >= deadline:
            optuna_store.prune_unended(study.name)
    try:
        measured = rungs.record(client, parent, search.metric)
    except (MlflowException, requests.RequestException):  # a tracking server down at the end: not measured
        measured = None
    if measured:
        print(measured)
    return results


def new_round(study: StudyConfig, nodes: list, trainable, done: int, callbacks: list, verbose: bool,
              deadline: float | None, store: Storage, plan: Plan | None = None) -> tune.Tuner:
    """A Tuner for the study's trials after its first `done`, in the study's Ray folder, ending by `deadline`."""
    search = study.search
    checkpoints = tune.CheckpointConfig(num_to_keep=study.train.keep_checkpoints,
                                        checkpoint_score_attribute=search.metric, checkpoint_score_order=study.mode)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=search.metric, mode=study.mode,
            search_alg=searcher(study, nodes, done, deadline, plan, say=live.say),
            scheduler=scheduler(study, study_prior(study, nodes, done), say=live.say),
            num_samples=search.num_samples - done,
            max_concurrent_trials=search.max_concurrent,
            # a trial's process (its start and imports: 8 s on an idle 2-core machine, 40 s loaded) serves the
            # next trial of the same resources: Tune reports synchronously, so a stopped trial ends at its report
            reuse_actors=True,
            time_budget_s=max(1.0, deadline - time.time()) if deadline else None),
        run_config=tune.RunConfig(
            name=study.name, storage_path=store.root, storage_filesystem=store.fs, callbacks=callbacks,
            checkpoint_config=checkpoints, failure_config=tune.FailureConfig(max_failures=search.max_failures),
            verbose=2 if verbose else 0),
    )


def earlier_best(study: StudyConfig, store: Storage) -> tuple[float, str] | None:
    """The best epoch of the study's trials so far, as (value, which trial), for a resumed study's live view."""
    try:
        _, metrics = outcomes.best_checkpoints(study.name, study.search.metric, study.mode, store)[0]
    except UserError:
        return None
    return metrics[study.search.metric], f"trial {metrics.get('ray_trial_id')}"


def round_ended(results) -> bool:
    """Whether every trial of a round ended (not interrupted): only then may a study grow."""
    return results.num_terminated + results.num_errors == len(results)

"""Running a study: checks first, then Ray Tune with the Optuna searcher and ASHA, tracked in MLflow.

Everything a user can get wrong is checked before anything is written (`check_study`): the space, the
backbone, the data (every photo decoded once), the resources. Then the study's parent run is created, and
Ray Tune runs the trials (`trainables.trainable.train_trial`), with `StudyTracker` logging each one.
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from pathlib import Path

import optuna
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from trainables import cache, data
from trainables.config import AugmentConfig, UserError
from trainables.models import check_backbone
from trainables.trainable import TRIAL_ERROR, train_trial
from tune import live, space, storage, tracking
from tune.config import StudyConfig
from tune.plan import RAY_START_S, Plan
from tune.storage import Storage

OPTUNA_DB = Path("mlruns") / "optuna.db"  # the Optuna studies (optuna-dashboard sqlite:///mlruns/optuna.db)
LOG_DIR = Path("mlruns") / "logs"  # the driver's log records (Ray, Optuna, MLflow), one file per study
ORPHAN = "tune.orphan"  # an Optuna trial the searcher proposed that never ran (its driver was killed)
TRAINABLES = Path(__file__).resolve().parent.parent / "trainables"  # the code Ray ships to every node


def study_params(name: str, uri: str) -> dict:
    """The params of the study's parent run in the MLflow store `uri` ({} when it has none)."""
    if not tracking.store_exists(uri):
        return {}
    client = tracking.connect(uri)
    parent = tracking.find_study_run(client, name)
    return client.get_run(parent).data.params if parent else {}


def study_storage(name: str, given: str | None = None, uri: str | None = None) -> Storage:
    """Where the study `name` keeps its Ray folder: `given` (--storage), else what the study was run with (its
    parent run's `storage` param in the MLflow store `uri`), else $TUNE_STORAGE, else mlruns/ray."""
    if given is None and uri is not None:
        given = study_params(name, uri).get("storage")
        if given and ("://" not in given and not Path(given).is_dir() or "=***" in given):
            given = None  # another machine's folder, or a URI whose credentials were not recorded
    return storage.resolve(given if given not in (None, "None") else None)


def best_checkpoint(study: str, metric: str, mode: str, store: Storage | None = None) -> tuple[Path, dict]:
    """The checkpoint folder of the study's best epoch over all trials (on this machine), and its metrics."""
    store = store or storage.resolve()
    path, metrics = best_checkpoints(study, metric, mode, store)[0]
    return store.local_path(path), metrics


def best_checkpoints(study: str, metric: str, mode: str, store: Storage | None = None) -> list[tuple[str, dict]]:
    """Each trial's best kept checkpoint folder (a path on the storage's filesystem) and its metrics, the best
    trial first. Trials the time budget cut before their last epoch are left out; so are the trials ASHA stopped
    early, where any trial's schedule ran to its end (Ray always keeps a trial's last checkpoint, so its epoch
    tells how far the trial got)."""
    store = store or storage.resolve()
    folder = store.study(study)
    if not store.exists(folder):
        raise UserError(f"no study named {study!r} in {store.shown}")
    files = store.files(folder)
    cut = {f.rsplit("/", 1)[0] for f in files if f.endswith(f"/{tracking.CUT_MARKER}")}
    best: dict[str, tuple[float, str, dict]] = {}
    reached: dict[str, tuple[int, int]] = {}  # trial -> (its last epoch, its schedule's length then)
    for metrics_file in files:
        checkpoint, _, name = metrics_file.rpartition("/")
        trial = checkpoint.rpartition("/")[0]
        if name != "metrics.json" or not checkpoint.rpartition("/")[2].startswith("checkpoint_") or trial in cut:
            continue  # a trial cut half-trained by the time budget is never the best
        metrics = json.loads(store.read_text(metrics_file))
        epoch = metrics.get("epoch", 0)
        if epoch >= reached.get(trial, (0, 0))[0]:  # from before trials reported it: taken as finished
            reached[trial] = (epoch, metrics.get("planned_epochs", epoch))
        value = metrics.get(metric)
        if value is not None and (trial not in best or (value > best[trial][0]) == (mode == "max")):
            best[trial] = (value, checkpoint, metrics)
    if not best and cut:
        raise UserError(f"study {study!r}: the time budget cut all its {len(cut)} trials with a result before their "
                        "last epoch (none is exported): give it a longer --time-budget")
    if not best:
        raise UserError(f"study {study!r} has no checkpoint with {metric} yet")
    finished = {t for t in best if reached[t][0] >= reached[t][1]}
    ranked = sorted((b for t, b in best.items() if t in finished or not finished), key=lambda s: s[0],
                    reverse=mode == "max")
    return [(checkpoint, metrics) for _, checkpoint, metrics in ranked]


def check_study(study: StudyConfig, where: str, cluster: bool) -> list:
    """Validate what a study needs before it starts; returns the parsed space. Raises UserError."""
    nodes = space.parse_space(study.space, study.trial_base(), where)
    check_backbones(study, nodes)
    if not nodes:
        raise UserError(f"{where}: space: is empty, so there is nothing to search: give it a key such as "
                        "optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}, or train the fixed values once with tune train")
    if study.resources.gpus_per_trial > 0 and not cluster:
        import torch

        if torch.cuda.device_count() < study.resources.gpus_per_trial:
            raise UserError(f"gpus_per_trial is {study.resources.gpus_per_trial}, but this machine has "
                            f"{torch.cuda.device_count()} CUDA GPU(s)")
    if study.resources.cpus_per_trial > (os.cpu_count() or 1) and not cluster:
        raise UserError(f"cpus_per_trial is {study.resources.cpus_per_trial}, "
                        f"but this machine has {os.cpu_count()} CPUs")
    if not study.data.root:
        raise UserError(f"{where}: no data folder: set data: in the file or pass --data DIR")
    table = data.read_table(study.data.root, study.data.max_persons)
    data.split_persons(table, study.data)
    files, workers = table["file"].tolist(), os.cpu_count() or 1
    if study.data.cache:  # decode every photo once, for all trials: this checks them too
        for size, crop in decodings(study, nodes):
            cache.cached_images(files, size, crop, cache.cache_dir(study.data.cache_dir), study.data.root,
                                workers=workers, progress=True)
    else:
        data.load_images(files, 32, None, workers=workers, progress=True, desc="checking images")
    return nodes


def decodings(study: StudyConfig, nodes: list) -> list[tuple[int, tuple[int, int] | None]]:
    """The (decoded size, centre crop) pairs the trials will ask the cache for, where the space lists them all.

    A size searched over a range is left to the trials: the first to need a size decodes it.
    """
    base = study.trial_defaults()
    values = {"model.image_size": [], "augment.center_crop": [], "augment.decode_margin": []}
    for param in _params(nodes):
        if param.path in values:
            if param.kind != "choice":
                values = {}
                break
            values[param.path] += param.values
    sizes = values.get("model.image_size") or [base.model.image_size]
    crops = values.get("augment.center_crop") or [base.augment.center_crop]
    margins = values.get("augment.decode_margin") or [base.augment.decode_margin]
    pairs = {(AugmentConfig(decode_margin=m).decoded_size(s), tuple(c) if c else None)
             for s in sizes for c in crops for m in margins}
    return sorted(pairs, key=str)


def check_name(name: str, resume: bool, store: Storage) -> None:
    """A new study needs a new name; --resume needs an interrupted study of that name."""
    path = store.study(name)
    if resume and not tune.Tuner.can_restore(path, storage_filesystem=store.fs):
        raise UserError(f"no interrupted study {name!r} to resume in {store.shown}")
    if not resume and store.exists(path):
        raise UserError(f"study {name!r} exists in {store.shown}: pass --resume to continue it or --name for a new one")


def check_backbones(study: StudyConfig, nodes: list) -> None:
    """Every backbone the study can use must be one timm knows."""
    model = study.trial_defaults().model
    backbones = {model.backbone} | {v for n in _params(nodes) if n.path == "model.backbone" for v in n.values}
    for name in sorted(backbones):
        check_backbone(model.model_copy(update={"backbone": name}))


def _params(nodes: list):
    for node in nodes:
        if isinstance(node, space.Param):
            yield node
        elif isinstance(node, space.Branching):
            for sub in node.branches.values():
                yield from _params(sub)


def optuna_storage() -> optuna.storages.RDBStorage:
    """The Optuna studies, in SQLite beside MLflow's store: optuna-dashboard reads it, a study can grow."""
    OPTUNA_DB.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(f"sqlite:///{OPTUNA_DB.resolve()}")


def trial_states(name: str) -> Counter:
    """How many trials of the study `name` Optuna holds in each state (COMPLETE, FAIL, RUNNING, ...)."""
    if not OPTUNA_DB.is_file() or name not in {s.study_name for s in optuna.get_all_study_summaries(optuna_storage())}:
        return Counter()
    trials = optuna.load_study(study_name=name, storage=optuna_storage()).get_trials(deepcopy=False)
    return Counter(t.state.name for t in trials if ORPHAN not in t.user_attrs)


def trials_done(name: str, states: Counter | None = None) -> int:
    """Trials of the study `name` that ended: finished (COMPLETE), failed (FAIL), or stopped before their last
    epoch by ASHA or the time budget (PRUNED: Optuna ranks them below every finished trial, by their last epoch)."""
    states = trial_states(name) if states is None else states
    return states["COMPLETE"] + states["FAIL"] + states["PRUNED"]


def prune_unended(name: str) -> None:
    """Tell Optuna that the trials Ray's time limit stopped were stopped (Ray tells its searcher nothing of them)."""
    study = optuna.load_study(study_name=name, storage=optuna_storage())
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)


def close_orphans(name: str) -> None:
    """After an interrupted round is finished: the Optuna trials still RUNNING were proposed after Ray last saved
    the searcher (its driver was killed) and never ran. They are closed as FAIL, marked, and not counted."""
    study = optuna.load_study(study_name=name, storage=optuna_storage())
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, ORPHAN, True)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def forget_optuna_study(name: str) -> None:
    if trial_states(name):
        optuna.delete_study(study_name=name, storage=optuna_storage())


def searcher(study: StudyConfig, nodes: list, done: int = 0, deadline: float | None = None,
             plan: Plan | None = None) -> OptunaSearch:
    """Optuna's sampler in Ray's searcher, over the study's Optuna study (which holds the `done` trials before).
    A new study's first trial is its fixed values (its prior), so the search is never worse than its best guess.
    With a `deadline` (time.time()), it starts no trial that would not reach its last epoch before it, judged
    first by the `plan`'s measured pace, then by the trials' own."""
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
    search.plan(study.scheduler.max_t, deadline, plan)
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
    start_s: float = RAY_START_S

    def plan(self, max_epochs: int, deadline: float | None, plan: Plan | None = None) -> None:
        self.max_epochs, self.deadline = max_epochs, deadline
        self.pace: dict[str, float] = {}  # Ray trial id -> seconds per epoch since the trial started
        if plan is not None:  # before any trial reports: the pace measured for the plan
            self.pace["measured"] = plan.pace.epoch_s
            self.start_s = plan.pace.start_s + RAY_START_S
        self.epochs: dict[str, int] = {}  # Ray trial id -> its epochs, where the budget shortened it
        self.suggested: dict[str, float] = {}  # Ray trial id -> when it was proposed (time.time())
        self.refused: str | None = None  # why the last trial was not started

    def trial_seconds(self) -> float | None:
        """What a new trial is expected to take to its last epoch (None: no pace measured or reported yet)."""
        return max(self.pace.values()) * self.max_epochs + self.start_s if self.pace else None

    def suggest(self, trial_id: str):
        needed = self.trial_seconds() if self.deadline is not None else None
        self.suggested[trial_id] = time.time()
        if needed is None or time.time() + needed <= self.deadline:
            return super().suggest(trial_id)
        left = self.deadline - time.time()
        fits = int((left - self.start_s) / max(self.pace.values()))
        if fits < max(1, (self.max_epochs + 1) // 2):
            self.refused = f"a trial takes about {needed:.0f} s and {max(0.0, left):.0f} s of the time budget are left"
            live.say(f"no more trials: {self.refused}")
            return Searcher.FINISHED
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            config["train.epochs"] = self.epochs[trial_id] = fits
        return config

    def ended_in_optuna(self, trial_id: str) -> bool:
        """Whether Optuna holds the trial as ended already: a study whose driver was killed is restored from Ray's
        last saved state, which can be behind the Optuna store (a trial that ended after it is run again)."""
        trial = self._ot_trials.get(trial_id)
        return trial is not None and self._ot_study._storage.get_trial(trial._trial_id).state.is_finished()

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
            self._ot_trials.pop(trial_id, None)
            return
        if result and TRIAL_ERROR in result:
            result, error = None, True
        elif self.max_epochs and result and result.get("epoch", 0) < result.get(
                "planned_epochs", self.epochs.get(trial_id, self.max_epochs)):
            result = None  # stopped early
        super().on_trial_complete(trial_id, result, error)


class PriorToTheEnd(ASHAScheduler):
    """ASHA, except that the study's prior (its fixed values, a new study's first trial) is never stopped early:
    the study then always holds its best guess trained to its last epoch, and the search is never worse than it."""

    def __init__(self, prior: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.prior = prior

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == self.STOP and result.get(self._time_attr, 0) < self._max_t and self.is_prior(trial.config):
            self._num_stopped -= 1
            return self.CONTINUE
        return action

    def is_prior(self, config: dict) -> bool:
        return bool(self.prior) and all(space.plain(config.get(k)) == v for k, v in self.prior.items())


def scheduler(study: StudyConfig, prior: dict | None = None):
    s = study.scheduler
    if s.name == "fifo":
        return FIFOScheduler()
    return PriorToTheEnd(prior, time_attr="training_iteration", max_t=s.max_t,
                         grace_period=min(s.grace_period, s.max_t), reduction_factor=s.reduction_factor)


def settings(study: StudyConfig, store: Storage) -> dict:
    return {"search": study.search.model_dump(), "scheduler": study.scheduler.model_dump(),
            "resources": study.resources.model_dump(), "storage": store.shown}


def start_ray(store: Storage, address: str | None, verbose: bool) -> None:
    """Start a local Ray, or join the cluster at `address`; every node gets this project's `trainables` from Ray
    (runtime_env py_modules: no path on the nodes is assumed). A cluster of several nodes needs storage they all
    reach: local storage is refused before anything runs."""
    import ray

    if ray.is_initialized():
        return
    runtime_env = {"py_modules": [str(TRAINABLES)], "excludes": ["__pycache__"]}
    # without --address a Ray of its own ("local"), never one that RAY_ADDRESS or an earlier `ray start` left
    ray.init(address=address or "local", runtime_env=runtime_env, include_dashboard=False, log_to_driver=verbose,
             configure_logging=False)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) > 1 and store.root == str(storage.LOCAL.resolve()):  # a folder given by --storage: a shared mount
        ray.shutdown()
        raise UserError(f"the Ray cluster at {address} has {len(nodes)} nodes and the study's storage is this "
                        f"machine's {store.root}: pass --storage s3://BUCKET/PREFIX (or a folder every node mounts, "
                        "with --storage /shared/path)")


def check_address(address: str) -> None:
    """UserError, in seconds, when nothing listens at a cluster's HOST:PORT (Ray itself retries for a minute)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: expected HOST:PORT, the head node's (ray start --head: port 6379)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise UserError(f"--address {address}: nothing answers there ({e.strerror or e}): start the cluster's "
                        f"head with ray start --head --port {port} (README: Working as a team), or fix it") from None


def cluster_resources() -> tuple[float, float | None]:
    """The CPUs and GPUs trials can use: the cluster's, when Ray runs (None for the GPUs: this machine's)."""
    import ray

    if not ray.is_initialized():
        return float(os.cpu_count() or 1), None
    resources = ray.cluster_resources()
    return resources.get("CPU", 1.0), resources.get("GPU", 0.0)


def check_nodes(study: StudyConfig, nodes: list) -> None:
    """Before the first trial, on every node of the cluster but this one: read the data folder and fill that
    node's photo cache. UserError naming the node and the folder when a node cannot read it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    others = [n for n in ray.nodes() if n["Alive"] and n["NodeID"] != here]
    if not others:
        return
    print(f"checking the data on {len(others)} other node(s) and filling their photo cache", flush=True)
    task = ray.remote(num_cpus=0)(cache.prepare_node)
    pending = {n["NodeID"]: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
               .remote(study.data.root, study.data.max_persons, decodings(study, nodes) if study.data.cache else [],
                       study.data.cache_dir) for n in others}
    for node in others:
        try:
            error = ray.get(pending[node["NodeID"]])
        except ray.exceptions.RayError as e:  # the node went away, or its code could not be set up
            error = str(e).strip().splitlines()[-1]
        if error:
            raise UserError(f"node {node['NodeManagerAddress']} ({node['NodeID'][:12]}): {error}")


def run_study(study: StudyConfig, nodes: list, uri: str, store: Storage, resume: bool = False,
              address: str | None = None, verbose: bool = False, started: float | None = None,
              plan: Plan | None = None):
    """Run the study to `search.num_samples` trials and return Ray's ResultGrid of its last round.

    With `search.time_budget_s`, the study ends that long after `started` (time.time(), default now: the
    command's start, so that checking and caching the data count): no trial starts that would not finish before
    then (`StudySearch`), a running trial shortens its schedule to end before then, and a trial still running
    then is cut, marked so, and never exported. `plan` (tune/plan.py, applied to `study` already) is recorded.
    A new study is one round of trials. `resume` first finishes an interrupted round (Ray restores it), then,
    when the study has fewer trials than `num_samples`, runs a new round for the rest: its searcher reads the
    Optuna study, so it chooses knowing every earlier trial.
    """
    import ray

    path = store.study(study.name)
    if not verbose:
        live.quiet_logs(LOG_DIR / f"{study.name}.log")
    tracking.quiet_retries()  # a tracking server that does not answer holds the study back seconds, not minutes
    client = tracking.connect(uri)
    parent = tracking.find_study_run(client, study.name) if resume else None
    if parent is None:
        resolved = yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False)
        parent = tracking.start_study_run(client, study.name, resolved, space.describe(nodes),
                                          settings(study, store) | (plan.params() if plan else {}))
    unlogged = LOG_DIR / f"{study.name}.unlogged.json"  # what the tracking server did not take last time
    if unlogged.is_file():  # logged first on --resume; dropped by a new study of the same name
        tracker = tracking.StudyTracker(uri, study.name, parent, study.trial_base(), study.train.epochs,
                                        study.search.metric, study.mode, unlogged=unlogged)
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
    start_ray(store, address, verbose)
    if not verbose:
        live.quiet_logs(LOG_DIR / f"{study.name}.log")
    trainable = tune.with_resources(tune.with_parameters(train_trial, base=study.trial_base(), end_by=deadline),
                                    {"cpu": study.resources.cpus_per_trial, "gpu": study.resources.gpus_per_trial})
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # a trial's failure report has no metric
    if not resume:  # a new study of a name used before (its Ray folder removed) starts its Optuna study anew
        forget_optuna_study(study.name)
    try:
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
            close_orphans(study.name)
        done = trials_done(study.name)
        if resume and done >= search.num_samples:
            print(f"study {study.name} has all its {done} trials: pass --num-samples N (more than {done}) to add some")
        if done < search.num_samples:
            if done:
                print(f"study {study.name} has {done} trials: {search.num_samples - done} more, chosen knowing them")
            client.update_run(parent, status="RUNNING")
            tracker = tracking.StudyTracker(uri, study.name, parent, study.trial_base(), study.train.epochs,
                                            search.metric, study.mode, deadline, unlogged)
            view = live.LiveView(search.metric, study.mode, study.train.epochs, search.num_samples, done,
                                 deadline, earlier_best(study, store))
            tuner = new_round(study, nodes, trainable, done, [tracker, view], verbose, deadline, store, plan)
            results = tuner.fit()
            if deadline is not None and time.time() >= deadline:
                prune_unended(study.name)
        return results
    finally:
        ray.shutdown()


def new_round(study: StudyConfig, nodes: list, trainable, done: int, callbacks: list, verbose: bool,
              deadline: float | None, store: Storage, plan: Plan | None = None) -> tune.Tuner:
    """A Tuner for the study's trials after its first `done`, in the study's Ray folder, ending by `deadline`."""
    search = study.search
    checkpoints = tune.CheckpointConfig(num_to_keep=study.train.keep_checkpoints,
                                        checkpoint_score_attribute=search.metric, checkpoint_score_order=study.mode)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=search.metric, mode=study.mode, search_alg=searcher(study, nodes, done, deadline, plan),
            scheduler=scheduler(study, study_prior(study, nodes, done)), num_samples=search.num_samples - done,
            max_concurrent_trials=search.max_concurrent,
            time_budget_s=max(1.0, deadline - time.time()) if deadline else None),
        run_config=tune.RunConfig(
            name=study.name, storage_path=store.root, storage_filesystem=store.fs, callbacks=callbacks,
            checkpoint_config=checkpoints, failure_config=tune.FailureConfig(max_failures=search.max_failures),
            verbose=2 if verbose else 0),
    )


def earlier_best(study: StudyConfig, store: Storage) -> tuple[float, str] | None:
    """The best epoch of the study's trials so far, as (value, which trial), for a resumed study's live view."""
    try:
        _, metrics = best_checkpoints(study.name, study.search.metric, study.mode, store)[0]
    except UserError:
        return None
    return metrics[study.search.metric], f"trial {metrics.get('ray_trial_id')}"


def round_ended(results) -> bool:
    """Whether every trial of a round ended (not interrupted): only then may a study grow."""
    return results.num_terminated + results.num_errors == len(results)

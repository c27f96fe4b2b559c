"""MLflow tracking of a study: one experiment per study name, one parent run per study, one child run per trial.

The store defaults to `sqlite:///mlruns/mlflow.db` with artifacts in `mlruns/artifacts`. Only the driver
writes to it (through `StudyTracker`, a Ray Tune callback), so trials never contend for the SQLite file.
Ray's own MLflow callback does not nest runs; this one does, through the `mlflow.parentRunId` tag.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from ray import tune
from sklearn.metrics import ConfusionMatrixDisplay

from trainables.config import UserError, resolve_trial
from trainables.data import class_names
from trainables.metrics import per_class_report
from trainables.trainable import TRIAL_ERROR

STORE = Path("mlruns")
METRICS = ("val_f1", "val_acc", "val_loss", "train_loss", "lr", "epoch_time_s",
           "val_f1_18", "val_f1_mask", "val_f1_gender", "val_f1_age", "val_age_mae")
STARTUP = ("startup_data_s", "startup_model_s", "first_step_s")  # with a trial's first epoch in its process
CUT_MARKER = "cut_by_time_budget.txt"  # in a trial's folder: the time budget ended it before its last epoch


def tracking_uri(uri: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the project's SQLite store (absolute)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{(STORE / 'mlflow.db').resolve()}"


def connect(uri: str) -> MlflowClient:
    """A client of the store, creating the project's store folder on first use; UserError for a tracking server
    that does not answer."""
    check_server(uri)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(uri)


def check_server(uri: str) -> None:
    """UserError when `uri` is a tracking server that does not answer (a store on disk is not checked)."""
    if is_server(uri) and not answers(uri):
        raise UserError(f"the MLflow tracking server {uri} does not answer: start it (README: Working as a team) "
                        "or pass another --tracking-uri")


def store_exists(uri: str) -> bool:
    """Whether there is a store at `uri` to read (a SQLite file that is not there is not made by asking)."""
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file()


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def answers(uri: str) -> bool:
    """Whether the tracking server at `uri` answers its health check."""
    try:
        return requests.get(f"{uri.rstrip('/')}/health", timeout=2).ok
    except requests.RequestException:
        return False


def quiet_retries() -> None:
    """MLflow's HTTP client retries a failed call for minutes by default, holding the whole study back; the
    tracker retries on its own, so each call gives up after seconds (settings already in the environment win)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def artifact_root() -> str:
    return str((STORE / "artifacts").resolve())


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    if is_server(client.tracking_uri):  # the server keeps (or serves) the artifacts where it was told to
        return client.create_experiment(name)
    return client.create_experiment(name, artifact_location=f"{artifact_root()}/{name}")


def find_study_run(client: MlflowClient, name: str) -> str | None:
    """The parent run of the study `name`, if it was started before."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], "tags.`tune.role` = 'study'", max_results=1)
    return runs[0].info.run_id if runs else None


def trial_runs(client: MlflowClient, parent_run_id: str, trial_id: str | None = None) -> list[Run]:
    """The child runs of a study's parent run, one per Ray trial (tag ray.trial_id); only `trial_id`'s if given."""
    experiment = client.get_run(parent_run_id).info.experiment_id
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    if trial_id is not None:
        query += f" and tags.`ray.trial_id` = '{trial_id}'"
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment], query, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


VIEW = "trials"  # the saved view of a study's runs table that `tune ui` opens


def set_trials_view(client: MlflowClient, experiment: str, params: list[str], metric: str = "val_f1",
                    mode: str = "max") -> None:
    """Save the view of the study's trials that `tune ui` opens: best first, with the scores and sampled params.

    MLflow 3 keeps saved views as experiment tags (mlflow.sharedViewState.KEY); a URL with
    viewStateShareKey=KEY opens one. Columns can be chosen only this way, not by URL parameters.
    """
    shown = dict.fromkeys((metric, "val_f1", "val_f1_mask", "val_f1_gender", "val_f1_age", "val_acc", "val_loss",
                           "epoch"))
    columns = [f"metrics.`best_{m}`" for m in shown] + ["tags.`tune.outcome`", *(f"params.`{p}`" for p in params)]
    state = {"searchFilter": "tags.`tune.role` = 'trial'", "orderByKey": f"metrics.`best_{metric}`",
             "orderByAsc": mode == "min",
             "startTime": "ALL", "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": [],
             "selectedColumns": columns}
    now = int(time.time() * 1000)
    view = {"name": "Trials, best first", "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment, f"mlflow.sharedViewState.{VIEW}", json.dumps(view))
    client.set_experiment_tag(experiment, "mlflow.experimentKind", "custom_model_development")


def trials_url(base: str, experiment: str) -> str:
    """The address of a study's runs table in its saved view (the Model training side of MLflow 3's UI)."""
    return f"{base}/#/experiments/{experiment}/runs?workflowType=machine_learning&viewStateShareKey={VIEW}"


def study_experiment(client: MlflowClient, study: str | None) -> str | None:
    """The experiment id of the study `study` (else the newest study), with its trials view; UserError if unknown."""
    if study is not None:
        experiment = client.get_experiment_by_name(study)
        if experiment is None or find_study_run(client, study) is None:
            raise UserError(f"no study named {study!r} in the MLflow store")
    else:
        studies = [e for e in client.search_experiments() if find_study_run(client, e.name) is not None]
        if not studies:
            return None
        experiment = max(studies, key=lambda e: (e.creation_time or 0, int(e.experiment_id)))
    if f"mlflow.sharedViewState.{VIEW}" not in experiment.tags:  # a study from before views were saved
        set_trials_view(client, experiment.experiment_id, [])
    return experiment.experiment_id


def start_study_run(client: MlflowClient, name: str, resolved_yaml: str, space_lines: list[str],
                    settings: dict) -> str:
    """Create the study's parent run with the resolved YAML, the space and the searcher/scheduler settings."""
    run = client.create_run(experiment_id(client, name), run_name=name, tags={"tune.role": "study"})
    run_id = run.info.run_id
    client.log_text(run_id, resolved_yaml, "study.yaml")
    client.log_text(run_id, "\n".join(space_lines) + "\n", "search_space.txt")
    log_params(client, run_id, flatten(settings))
    return run_id


def log_params(client: MlflowClient, run_id: str, params: dict[str, object]) -> None:
    items = [Param(k, json.dumps(v) if isinstance(v, (list, tuple)) else str(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[i : i + 100])


def log_table(client: MlflowClient, run_id: str, table: pd.DataFrame, name: str) -> None:
    """A table in MLflow's table format, replacing any earlier one (client.log_table would append to it)."""
    client.log_dict(run_id, json.loads(table.to_json(orient="split", index=False)), name)


def outcome(trial, epochs: int, deadline: float | None = None) -> str:
    """How a Ray trial ended: failed (by itself, or its process died too often), finished (all its epochs),
    stopped_early (by ASHA), or cut (still training at the time budget's `deadline`, a time.time())."""
    if trial.status == "ERROR" or TRIAL_ERROR in (trial.last_result or {}):
        return "failed"
    if (trial.last_result or {}).get("epoch", 0) >= planned_epochs(trial, epochs):
        return "finished"
    return "cut" if deadline is not None and time.time() >= deadline else "stopped_early"


def planned_epochs(trial, epochs: int) -> int:
    """A Ray trial's schedule: as it last reported it (it shortens itself to end within a time budget), else its
    own config's (the searcher shortened it at its start), else the study's `epochs`."""
    return (trial.last_result or {}).get("planned_epochs") or trial.config.get("train.epochs", epochs)


def read_table(client: MlflowClient, run_id: str, name: str) -> pd.DataFrame | None:
    """A table logged by `log_table`, or None when the run has none."""
    if name not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        frame = json.loads(Path(client.download_artifacts(run_id, name, tmp)).read_text())
    return pd.DataFrame(frame["data"], columns=frame["columns"])


def error_text(trial) -> str | None:
    """A failed trial's traceback: the one it reported, else Ray's local error file (not yet synced to storage)."""
    if TRIAL_ERROR in (trial.last_result or {}):
        return trial.last_result[TRIAL_ERROR]
    local = Path(trial.error_file) if getattr(trial, "error_file", None) else None
    if local is not None and local.is_file():
        return local.read_text()
    return trial.get_error()


class StudyTracker(tune.Callback):
    """Ray Tune callback: a child run per trial under the study's parent run, with per-epoch metrics.

    Every record goes through a queue (`pending`, in order): a tracking server that does not answer (restarting,
    the network) never stops the study. What it could not take is logged when it answers again, tried every
    `RETRY_S`; the queue is saved with Ray's experiment state, and what is still queued when the study ends is
    written to `unlogged` for the next `--resume` to log. Each record can be logged twice without doubling
    anything (metrics carry their own timestamps; a trial's epochs already in its run are not logged again,
    as when a restarted trial repeats the epochs after its last checkpoint).
    """

    RETRY_S = float(os.environ.get("TUNE_TRACKING_RETRY_S", 10))  # how soon after a failed call it tries again
    DRAIN_S = 120.0  # how long the study's end waits for a server that does not answer

    def __init__(self, uri: str, study: str, parent_run_id: str, base: dict, epochs: int, metric: str, mode: str,
                 deadline: float | None = None, unlogged: Path | None = None):
        self.uri, self.study, self.parent = uri, study, parent_run_id
        self.base, self.epochs, self.metric, self.mode, self.deadline = base, epochs, metric, mode, deadline
        self.runs: dict[str, str] = {}  # Ray trial id -> MLflow run id
        self.best: dict[str, dict] = {}  # Ray trial id -> its best result so far
        self.ended: dict[str, str] = {}  # Ray trial id -> its outcome, as it was when the trial ended
        self.logged: dict[str, int] = {}  # Ray trial id -> the last epoch its MLflow run holds
        self.nodes: dict[str, list[str]] = {}  # Ray trial id -> the Ray nodes it ran on
        self.start = time.time()
        self.anytime: list[tuple[float, float]] = []  # (seconds into the round, the study's best so far)
        self.unlogged = unlogged
        self.pending: list[list] = []  # [kind, trial id, payload]: the records MLflow has not taken yet
        self.synced: set[str] = set()  # trials whose `logged` was read from their run in this process
        self.retry_at, self.outage = 0.0, False
        self._client: MlflowClient | None = None

    def __getstate__(self) -> dict:  # Ray pickles callbacks with the experiment state; the client stays behind
        return {**self.__dict__, "_client": None}

    def __setstate__(self, state: dict) -> None:  # a tracker pickled before the queue existed restores too
        defaults = {"logged": {}, "nodes": {}, "pending": [], "retry_at": 0.0, "outage": False, "unlogged": None,
                    "synced": set()}
        self.__dict__.update({**defaults, **state})

    def load_unlogged(self) -> None:
        """Queue the records the study's last run left in `unlogged` (for this parent run only)."""
        if self.unlogged is not None and self.unlogged.is_file():
            saved = json.loads(self.unlogged.read_text())
            if saved.get("parent") == self.parent:
                self.pending = saved["records"] + self.pending
            self.unlogged.unlink()

    def get_state(self) -> dict:  # saved with each experiment checkpoint, given back when a study is restored
        return {"runs": dict(self.runs), "best": dict(self.best), "anytime": list(self.anytime),
                "ended": dict(self.ended), "nodes": dict(self.nodes), "pending": list(self.pending)}

    def set_state(self, state: dict) -> None:
        self.runs, self.best = state["runs"], state["best"]
        self.anytime, self.ended = state.get("anytime", []), state.get("ended", {})
        self.nodes, self.pending = state.get("nodes", {}), state.get("pending", [])
        self.logged, self.synced = {}, set()  # read from the runs: they may hold more epochs than this state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    # Ray's events: each becomes a record, logged now or, while the server does not answer, later.

    def on_trial_start(self, iteration, trials, trial, **info):
        self._record("start", trial.trial_id, config=trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if TRIAL_ERROR in result:  # its failure, logged when it completes
            return
        value, best = result[self.metric], self.best.get(trial.trial_id)
        if best is None or self._better(value, best[self.metric]):
            self.best[trial.trial_id] = {k: result[k] for k in (*METRICS, "epoch", "confusion") if k in result}
        metrics = {k: float(result[k]) for k in (*METRICS, *STARTUP) if k in result}
        self._record("result", trial.trial_id, config=trial.config, epoch=int(result["epoch"]), metrics=metrics,
                     at=int(time.time() * 1000), node=result.get("node_id"), code=result.get("code"))
        if not self.anytime or self._better(value, self.anytime[-1][1]):  # anytime performance: the best so far
            self.anytime.append((time.time() - self.start, value))
            self._record("anytime", "", value=value, step=int(self.anytime[-1][0]), at=int(time.time() * 1000))

    def _better(self, value: float, than: float) -> bool:
        return value > than if self.mode == "max" else value < than

    def on_trial_complete(self, iteration, trials, trial, **info):
        if outcome(trial, self.epochs) == "failed":  # it failed by itself: reported its error and ended
            return self.on_trial_error(iteration, trials, trial, **info)
        ended = self.ended[trial.trial_id] = outcome(trial, self.epochs, self.deadline)
        if ended == "cut":  # half-trained: the export and ensembles leave it out
            fs, folder = trial.storage.storage_filesystem, trial.storage.trial_fs_path
            with fs.open_output_stream(f"{folder}/{CUT_MARKER}") as f:
                f.write(b"the time budget ended this trial before its last epoch\n")
        self._record("end", trial.trial_id, config=trial.config, outcome=ended, best=self.best.get(trial.trial_id),
                     error=None, status="FINISHED", at=int(time.time() * 1000))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = "failed"
        self._record("end", trial.trial_id, config=trial.config, outcome="failed",
                     best=self.best.get(trial.trial_id), error=error_text(trial), status="FAILED",
                     at=int(time.time() * 1000))

    def on_experiment_end(self, trials, **info):
        if self.deadline is not None and time.time() >= self.deadline:  # Ray's time limit stopped these trials
            for trial in trials:  # without telling callbacks that they ended
                if (trial.trial_id in self.runs or trial.last_result) and trial.trial_id not in self.ended:
                    self.on_trial_complete(0, trials, trial)
        rows = []
        for trial in trials:
            best, ended = self.best.get(trial.trial_id, {}), self.ended.get(trial.trial_id)
            rows.append({"trial_id": trial.trial_id, "outcome": ended or outcome(trial, self.epochs),
                         "epochs": (trial.last_result or {}).get("epoch", 0),
                         f"best_{self.metric}": best.get(self.metric), "best_epoch": best.get("epoch"),
                         "mlflow_run_id": self.runs.get(trial.trial_id), **trial.config})
        self._record("study_end", "", rows=rows, anytime=self.anytime,
                     budget_s=self.deadline and self.deadline - self.start)
        self.drain()

    # The queue.

    def _record(self, kind: str, trial_id: str, **payload) -> None:
        self.pending.append([kind, trial_id, payload])
        self._flush()

    def _flush(self) -> bool:
        """Log the queued records in order, until the server does not answer; whether all were logged."""
        from tune import live

        if self.pending and time.time() < self.retry_at:
            return False
        while self.pending:
            kind, trial_id, payload = self.pending[0]
            try:
                getattr(self, f"_log_{kind}")(trial_id, **payload)
            except (MlflowException, requests.RequestException) as e:
                if not is_server(self.uri):
                    raise
                refused = isinstance(e, MlflowException) and e.get_http_status_code() < 500
                if refused and answers(self.uri):  # the server is there and refused it: it never would take it
                    logging.getLogger(__name__).warning("MLflow refused a %s record of %s: %s", kind, trial_id, e)
                    self.pending.pop(0)
                    continue
                if not self.outage:
                    live.say(f"MLflow at {self.uri} does not answer: the study goes on, and what it cannot log now "
                             "is logged when it answers")
                self.outage, self.retry_at = True, time.time() + self.RETRY_S
                return False
            self.pending.pop(0)
        if self.outage:
            live.say(f"MLflow at {self.uri} answers again: the records held back are logged")
            self.outage = False
        return True

    def drain(self) -> None:
        """At the study's end: wait a while for a server that does not answer, then leave the rest for --resume."""
        from tune import live

        until = time.time() + self.DRAIN_S
        while not self._flush() and time.time() < until:
            time.sleep(max(0.0, self.retry_at - time.time()))
        if self.pending and self.unlogged is not None:
            self.unlogged.parent.mkdir(parents=True, exist_ok=True)
            self.load_unlogged()  # what an earlier drain of this study left there, first
            self.unlogged.write_text(json.dumps({"parent": self.parent, "records": self.pending}, default=str))
            live.say(f"MLflow at {self.uri} did not answer: {len(self.pending)} records are kept in {self.unlogged} "
                     "and logged by the study's next tune run --resume")

    # The records, as MLflow calls: each may run again after a failure without doubling anything.

    def _run_of(self, trial_id: str, config: dict) -> str:
        if trial_id not in self.runs:
            found = trial_runs(self.client, self.parent, trial_id)
            if found:  # the study was resumed, or the record is logged again
                run_id = found[0].info.run_id
                self.client.update_run(run_id, status="RUNNING")
            else:
                experiment = self.client.get_run(self.parent).info.experiment_id
                tags = {"mlflow.parentRunId": self.parent, "ray.trial_id": trial_id, "tune.role": "trial"}
                run_id = self.client.create_run(experiment, run_name=f"{self.study}_{trial_id}", tags=tags).info.run_id
                self.synced.add(trial_id)  # new: it holds no epoch
            self.runs[trial_id] = run_id
        if trial_id not in self.synced:  # the epochs its run holds: a state restored after a crash can be behind
            history = self.client.get_metric_history(self.runs[trial_id], self.metric)
            self.logged[trial_id] = max((m.step for m in history), default=0)
            self.synced.add(trial_id)
        return self.runs[trial_id]

    def _log_start(self, trial_id: str, config: dict) -> None:
        run_id = self._run_of(trial_id, config)
        resolved = resolve_trial(self.base, config).model_dump(mode="json")
        log_params(self.client, run_id, flatten(resolved))
        self.client.log_dict(run_id, resolved, "config.json")

    def _log_result(self, trial_id: str, config: dict, epoch: int, metrics: dict, at: int, node: str | None,
                    code: str | None) -> None:
        run_id = self._run_of(trial_id, config)
        if epoch <= self.logged.get(trial_id, 0):  # an epoch repeated after a restart: its run has it
            return
        nodes = self.nodes.get(trial_id, [])
        if node and node not in nodes:  # where it ran (a retried trial may move) and the code it ran
            nodes = [*nodes, node]
        tags = [RunTag("ray.node_ids", ",".join(nodes)), RunTag("tune.code", code or "")] if node else []
        self.client.log_batch(run_id, metrics=[Metric(k, v, at, epoch) for k, v in metrics.items()], tags=tags)
        self.logged[trial_id], self.nodes[trial_id] = epoch, nodes

    def _log_anytime(self, trial_id: str, value: float, step: int, at: int) -> None:
        self.client.log_metric(self.parent, f"best_so_far_{self.metric}", value, timestamp=at, step=step)

    def _log_end(self, trial_id: str, config: dict, outcome: str, best: dict | None, error: str | None,
                 status: str, at: int) -> None:
        run_id = self._run_of(trial_id, config)
        ended_before = "tune.outcome" in self.client.get_run(run_id).data.tags  # ended again after a restore
        if best is not None and not ended_before:
            self._log_best(run_id, config, dict(best), at)
        self.client.set_tag(run_id, "tune.outcome", outcome)
        if error is not None:
            self.client.log_text(run_id, error, "error.txt")
        self.client.set_terminated(run_id, status)

    def _log_best(self, run_id: str, config: dict, best: dict, at: int) -> None:
        """For the trial's best epoch: its metrics as best_*, a confusion-matrix image and a per-class report."""
        resolved = resolve_trial(self.base, config)
        names = class_names(resolved.task, resolved.data.score_age_bounds)
        confusion = json.loads(best.pop("confusion"))
        self.client.log_batch(run_id, metrics=[Metric(f"best_{k}", float(v), at, 0) for k, v in best.items()])
        log_table(self.client, run_id, pd.DataFrame(per_class_report(confusion, names)), "per_class_report.json")
        self.client.log_figure(run_id, confusion_figure(confusion, names, f"epoch {best['epoch']}"),
                               "confusion_matrix.png")
        plt.close("all")

    def _log_study_end(self, trial_id: str, rows: list[dict], anytime: list, budget_s: float | None) -> None:
        table = pd.DataFrame(rows)
        earlier = read_table(self.client, self.parent, "trials.json")  # a study that grew: its earlier rounds
        if earlier is not None and len(earlier):
            table = pd.concat([earlier[~earlier["trial_id"].isin(table.get("trial_id", []))], table],
                              ignore_index=True)
        if len(table):
            log_table(self.client, self.parent, table, "trials.json")
        scored = table.dropna(subset=[f"best_{self.metric}"]) if len(table) else table
        scored = scored[scored["outcome"] != "cut"] if len(scored) else scored
        if anytime:
            self.client.log_figure(self.parent, anytime_figure(anytime, self.metric, budget_s), "anytime.png")
            plt.close("all")
        if len(scored):
            best_row = scored.sort_values(f"best_{self.metric}", ascending=self.mode == "min").iloc[0]
            self.client.set_tag(self.parent, "tune.best_trial_id", best_row["trial_id"])
            self.client.log_metric(self.parent, f"best_{self.metric}", float(best_row[f"best_{self.metric}"]))
        self.client.set_terminated(self.parent, "FINISHED")


def anytime_figure(points: list[tuple[float, float]], metric: str, budget_s: float | None):
    """The study's best `metric` so far against wall time (anytime performance), with the time budget's end."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    minutes = [t / 60 for t, _ in points]
    end = max(minutes[-1], (budget_s or 0) / 60)
    ax.step(minutes + [end], [v for _, v in points] + [points[-1][1]], where="post")
    if budget_s:
        ax.axvline(budget_s / 60, color="gray", linestyle="--", label="time budget")
        ax.legend(loc="lower right")
    ax.set(xlabel="minutes since the study started", ylabel=f"best {metric} so far", title="Anytime performance")
    fig.tight_layout()
    return fig


def confusion_figure(confusion: list[list[int]], names: list[str], title: str):
    size = 4 + 0.35 * len(names)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(pd.DataFrame(confusion).to_numpy(), display_labels=names).plot(
        ax=ax, colorbar=False, xticks_rotation=90, values_format="d")
    ax.set_title(title)
    fig.tight_layout()
    return fig

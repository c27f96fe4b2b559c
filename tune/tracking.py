"""MLflow tracking of a study: one experiment per study name, one parent run per study, one child run per trial.

The store defaults to `sqlite:///mlruns/mlflow.db` with artifacts in `mlruns/artifacts`. Only the driver
writes to it (through `StudyTracker`, a Ray Tune callback), so trials never contend for the SQLite file.
Ray's own MLflow callback does not nest runs; this one does, through the `mlflow.parentRunId` tag.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run
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
    """A client of the store, creating the project's store folder on first use."""
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(uri)


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
    if (trial.last_result or {}).get("epoch", 0) >= trial.config.get("train.epochs", epochs):  # its own, if set
        return "finished"
    return "cut" if deadline is not None and time.time() >= deadline else "stopped_early"


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
    """Ray Tune callback: a child run per trial under the study's parent run, with per-epoch metrics."""

    def __init__(self, uri: str, study: str, parent_run_id: str, base: dict, epochs: int, metric: str, mode: str,
                 deadline: float | None = None):
        self.uri, self.study, self.parent = uri, study, parent_run_id
        self.base, self.epochs, self.metric, self.mode, self.deadline = base, epochs, metric, mode, deadline
        self.runs: dict[str, str] = {}  # Ray trial id -> MLflow run id
        self.best: dict[str, dict] = {}  # Ray trial id -> its best result so far
        self.ended: dict[str, str] = {}  # Ray trial id -> its outcome, as it was when the trial ended
        self.start = time.time()
        self.anytime: list[tuple[float, float]] = []  # (seconds into the round, the study's best so far)
        self._client: MlflowClient | None = None

    def __getstate__(self) -> dict:  # Ray pickles callbacks with the experiment state; the client stays behind
        return {**self.__dict__, "_client": None}

    def get_state(self) -> dict:  # saved with each experiment checkpoint, given back when a study is restored
        return {"runs": dict(self.runs), "best": dict(self.best), "anytime": list(self.anytime),
                "ended": dict(self.ended)}

    def set_state(self, state: dict) -> None:
        self.runs, self.best = state["runs"], state["best"]
        self.anytime, self.ended = state.get("anytime", []), state.get("ended", {})

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    def _run_of(self, trial) -> str:
        if trial.trial_id not in self.runs:
            found = trial_runs(self.client, self.parent, trial.trial_id)
            if found:
                self.runs[trial.trial_id] = found[0].info.run_id
                self.client.update_run(found[0].info.run_id, status="RUNNING")
            else:
                self.runs[trial.trial_id] = self._start_child(trial)
        return self.runs[trial.trial_id]

    def _start_child(self, trial) -> str:
        experiment = self.client.get_run(self.parent).info.experiment_id
        tags = {"mlflow.parentRunId": self.parent, "ray.trial_id": trial.trial_id, "tune.role": "trial"}
        run_id = self.client.create_run(experiment, run_name=f"{self.study}_{trial.trial_id}", tags=tags).info.run_id
        config = resolve_trial(self.base, trial.config)
        log_params(self.client, run_id, flatten(config.model_dump(mode="json")))
        self.client.log_dict(run_id, config.model_dump(mode="json"), "config.json")
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run_of(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if TRIAL_ERROR in result:  # its failure, logged when it completes
            return
        run_id = self._run_of(trial)
        step, now = int(result["epoch"]), int(time.time() * 1000)
        metrics = [Metric(k, float(result[k]), now, step) for k in (*METRICS, *STARTUP) if k in result]
        self.client.log_batch(run_id, metrics=metrics)
        best = self.best.get(trial.trial_id)
        value = result[self.metric]
        if best is None or self._better(value, best[self.metric]):
            self.best[trial.trial_id] = {k: result[k] for k in (*METRICS, "epoch", "confusion") if k in result}
        if not self.anytime or self._better(value, self.anytime[-1][1]):  # anytime performance: the best so far
            self.anytime.append((time.time() - self.start, value))
            self.client.log_metric(self.parent, f"best_so_far_{self.metric}", value, step=int(self.anytime[-1][0]))

    def _better(self, value: float, than: float) -> bool:
        return value > than if self.mode == "max" else value < than

    def on_trial_complete(self, iteration, trials, trial, **info):
        if outcome(trial, self.epochs) == "failed":  # it failed by itself: reported its error and ended
            return self.on_trial_error(iteration, trials, trial, **info)
        run_id, ended = self._run_of(trial), outcome(trial, self.epochs, self.deadline)
        self.ended[trial.trial_id] = ended
        self._log_best(trial, run_id)
        self.client.set_tag(run_id, "tune.outcome", ended)
        if ended == "cut":  # half-trained: the export and ensembles leave it out
            fs, folder = trial.storage.storage_filesystem, trial.storage.trial_fs_path
            with fs.open_output_stream(f"{folder}/{CUT_MARKER}") as f:
                f.write(b"the time budget ended this trial before its last epoch\n")
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self._run_of(trial)
        self.ended[trial.trial_id] = "failed"
        self._log_best(trial, run_id)
        error = error_text(trial)
        self.client.set_tag(run_id, "tune.outcome", "failed")
        if error is not None:
            self.client.log_text(run_id, error, "error.txt")
        self.client.set_terminated(run_id, "FAILED")

    def _log_best(self, trial, run_id: str) -> None:
        """For the trial's best epoch: its metrics as best_*, a confusion-matrix image and a per-class report."""
        best = self.best.get(trial.trial_id)
        if best is None:
            return
        config = resolve_trial(self.base, trial.config)
        names = class_names(config.task, config.data.score_age_bounds)
        confusion = json.loads(best.pop("confusion"))
        self.client.log_batch(run_id, metrics=[Metric(f"best_{k}", float(v), int(time.time() * 1000), 0)
                                               for k, v in best.items()])
        log_table(self.client, run_id, pd.DataFrame(per_class_report(confusion, names)), "per_class_report.json")
        self.client.log_figure(run_id, confusion_figure(confusion, names, f"epoch {best['epoch']}"),
                               "confusion_matrix.png")
        plt.close("all")

    def on_experiment_end(self, trials, **info):
        if self.deadline is not None and time.time() >= self.deadline:  # Ray's time limit stopped these trials
            for trial in trials:  # without telling callbacks that they ended
                if trial.trial_id in self.runs and trial.trial_id not in self.ended:
                    self.on_trial_complete(0, trials, trial)
        rows = []
        for trial in trials:
            best = self.best.get(trial.trial_id, {})
            epochs = (trial.last_result or {}).get("epoch", 0)
            ended = self.ended.get(trial.trial_id) or outcome(trial, self.epochs)
            rows.append({"trial_id": trial.trial_id, "outcome": ended, "epochs": epochs,
                         f"best_{self.metric}": best.get(self.metric), "best_epoch": best.get("epoch"),
                         "mlflow_run_id": self.runs.get(trial.trial_id), **trial.config})
        table = pd.DataFrame(rows)
        earlier = read_table(self.client, self.parent, "trials.json")  # a study that grew: its earlier rounds
        if earlier is not None and len(earlier):
            table = pd.concat([earlier[~earlier["trial_id"].isin(table.get("trial_id", []))], table],
                              ignore_index=True)
        if len(table):
            log_table(self.client, self.parent, table, "trials.json")
        scored = table.dropna(subset=[f"best_{self.metric}"]) if len(table) else table
        scored = scored[scored["outcome"] != "cut"] if len(scored) else scored
        if self.anytime:
            self.client.log_figure(self.parent, anytime_figure(self.anytime, self.metric, self.deadline and
                                                               self.deadline - self.start), "anytime.png")
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

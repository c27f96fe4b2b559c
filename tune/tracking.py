"""The MLflow store: where it is, whether it answers, and how a study is kept in it.

One experiment per study name, one parent run per study, one child run per trial (written while the study runs
by `tune.search.tracker.StudyTracker`). The store defaults to `sqlite:///mlruns/mlflow.db` with artifacts in
`mlruns/artifacts`. Here: the tracking URI and its health, the queries of a study's runs, the saved view
`tune ui` opens, and the tables and figures logged to runs. Nothing here imports Ray.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import requests
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Param, Run

from trainables.config import UserError

STORE = Path("mlruns")
METRICS = ("val_f1", "val_acc", "val_loss", "train_loss", "lr", "epoch_time_s",
           "val_f1_18", "val_f1_mask", "val_f1_gender", "val_f1_age", "val_age_mae")
STAGES = ("train_s", "loader_wait_s", "val_s")  # where an epoch's seconds went
STARTUP = ("startup_data_s", "startup_model_s", "first_step_s")  # with a trial's first epoch in its process
AVERAGE = ("average_val_f1", "last_epoch_val_f1", "averaged_epochs")  # train.average_last, at the schedule's end


def tracking_uri(uri: str | None = None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the project's SQLite store (absolute)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{(STORE / 'mlflow.db').resolve()}"


def connect(uri: str) -> MlflowClient:
    """A client of the store, creating the project's store folder on first use; UserError for a tracking server
    that does not answer. A SQLite store's tables are made (or found) under a lock next to its file: MLflow makes
    them as a process's first client starts, and commands started together on a new store (`tune run` in one
    terminal, `tune train` in another) raced to: most failed half-way through a migration (7 of 9 in three tries
    of three)."""
    check_server(uri)
    db = sqlite_file(uri)
    if db is None:
        return MlflowClient(uri)
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock"):
        return MlflowClient(uri)


def check_server(uri: str) -> None:
    """UserError when `uri` is a tracking server that does not answer (a store on disk is not checked)."""
    if is_server(uri) and not answers(uri):
        raise UserError(f"the MLflow tracking server {uri} does not answer: start it (README: Working as a team) "
                        "or pass another --tracking-uri")


def store_exists(uri: str) -> bool:
    """Whether there is a store at `uri` to read (a SQLite file that is not there is not made by asking)."""
    db = sqlite_file(uri)
    return db is None or db.is_file()


def sqlite_file(uri: str) -> Path | None:
    """The file of a SQLite store's URI; None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


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


def study_params(name: str, uri: str) -> dict:
    """The params of the study's parent run in the MLflow store `uri` ({} when it has none)."""
    if not store_exists(uri):
        return {}
    client = connect(uri)
    parent = find_study_run(client, name)
    return client.get_run(parent).data.params if parent else {}


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


def read_table(client: MlflowClient, run_id: str, name: str) -> pd.DataFrame | None:
    """A table logged by `log_table`, or None when the run has none."""
    if name not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        frame = json.loads(Path(client.download_artifacts(run_id, name, tmp)).read_text())
    return pd.DataFrame(frame["data"], columns=frame["columns"])



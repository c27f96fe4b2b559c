"""`StudyTracker`, the Ray Tune callback that writes a study into MLflow as it runs.

One child run per trial under the study's parent run (nested by the `mlflow.parentRunId` tag, which Ray's own
MLflow callback does not do), with per-epoch metrics, its outcome (`tune.outcomes`), its best epoch's metrics,
confusion matrix and per-class report; at the study's end, the table of its trials and its anytime curve. Only
the driver writes to the store, so trials never contend for the SQLite file.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from ray import tune

from trainables.config import TRIAL_ERROR, resolve_trial
from trainables.data import class_names
from trainables.metrics import per_class_report
from trainables.weights import with_weights
from tune import outcomes
from tune.figures import anytime_figure, confusion_figure
from tune.tracking import (
    AVERAGE,
    METRICS,
    STAGES,
    STARTUP,
    answers,
    flatten,
    is_server,
    log_params,
    log_table,
    read_table,
    trial_runs,
)


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
                 deadline: float | None = None, unlogged: Path | None = None, say: Callable[[str], None] = print,
                 first: int = 1):
        """say: how to tell the person that the tracking server does not answer, and answers again; first: the
        number of this round's first trial in the study (as the live view numbers them: #1, #2, ...)."""
        self.uri, self.study, self.parent, self.say, self.first = uri, study, parent_run_id, say, first
        self.numbers: dict[str, int] = {}  # Ray trial id -> its number in the study, for its run's name
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
                    "synced": set(), "say": print, "first": 1, "numbers": {}}
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
                "ended": dict(self.ended), "nodes": dict(self.nodes), "pending": list(self.pending),
                "numbers": dict(self.numbers)}

    def set_state(self, state: dict) -> None:
        self.runs, self.best = state["runs"], state["best"]
        self.anytime, self.ended = state.get("anytime", []), state.get("ended", {})
        self.nodes, self.pending = state.get("nodes", {}), state.get("pending", [])
        self.numbers = state.get("numbers", {})
        self.logged, self.synced = {}, set()  # read from the runs: they may hold more epochs than this state

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    # Ray's events: each becomes a record, logged now or, while the server does not answer, later.

    def on_trial_start(self, iteration, trials, trial, **info):
        self.numbers.setdefault(trial.trial_id, self.first + len(self.numbers))
        self._record("start", trial.trial_id, config=trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if TRIAL_ERROR in result:  # its failure, logged when it completes
            return
        value, best = result[self.metric], self.best.get(trial.trial_id)
        if best is None or self._better(value, best[self.metric]):
            self.best[trial.trial_id] = {k: result[k] for k in (*METRICS, "epoch", "confusion") if k in result}
        metrics = {k: float(result[k]) for k in (*METRICS, *STAGES, *STARTUP, *AVERAGE) if k in result}
        self._record("result", trial.trial_id, config=trial.config, epoch=int(result["epoch"]), metrics=metrics,
                     at=int(time.time() * 1000), node=result.get("node_id"), code=result.get("code"))
        if not self.anytime or self._better(value, self.anytime[-1][1]):  # anytime performance: the best so far
            self.anytime.append((time.time() - self.start, value))
            self._record("anytime", "", value=value, step=int(self.anytime[-1][0]), at=int(time.time() * 1000))

    def _better(self, value: float, than: float) -> bool:
        return value > than if self.mode == "max" else value < than

    def on_trial_complete(self, iteration, trials, trial, **info):
        if outcomes.of_trial(trial, self.epochs) == outcomes.FAILED:  # it failed by itself: reported its error
            return self.on_trial_error(iteration, trials, trial, **info)
        ended = self.ended[trial.trial_id] = outcomes.of_trial(trial, self.epochs, self.deadline)
        if ended == outcomes.CUT:  # half-trained: the export and ensembles leave it out
            fs, folder = trial.storage.storage_filesystem, trial.storage.trial_fs_path
            with fs.open_output_stream(f"{folder}/{outcomes.CUT_MARKER}") as f:
                f.write(b"the time budget ended this trial before its last epoch\n")
        self._record("end", trial.trial_id, config=trial.config, outcome=ended, best=self.best.get(trial.trial_id),
                     error=None, status="FINISHED", at=int(time.time() * 1000))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended[trial.trial_id] = outcomes.FAILED
        self._record("end", trial.trial_id, config=trial.config, outcome=outcomes.FAILED,
                     best=self.best.get(trial.trial_id), error=outcomes.error_text(trial), status="FAILED",
                     at=int(time.time() * 1000))

    def on_experiment_end(self, trials, **info):
        if self.deadline is not None and time.time() >= self.deadline:  # Ray's time limit stopped these trials
            for trial in trials:  # without telling callbacks that they ended
                if (trial.trial_id in self.runs or trial.last_result) and trial.trial_id not in self.ended:
                    self.on_trial_complete(0, trials, trial)
        rows = []
        for trial in trials:
            best, ended = self.best.get(trial.trial_id, {}), self.ended.get(trial.trial_id)
            rows.append({"trial_id": trial.trial_id, "outcome": ended or outcomes.of_trial(trial, self.epochs),
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
                    self.say(f"MLflow at {self.uri} does not answer: the study goes on, and what it cannot log now "
                             "is logged when it answers")
                self.outage, self.retry_at = True, time.time() + self.RETRY_S
                return False
            self.pending.pop(0)
        if self.outage:
            self.say(f"MLflow at {self.uri} answers again: the records held back are logged")
            self.outage = False
        return True

    def drain(self) -> None:
        """At the study's end: wait a while for a server that does not answer, then leave the rest for --resume."""
        until = time.time() + self.DRAIN_S
        while not self._flush() and time.time() < until:
            time.sleep(max(0.0, self.retry_at - time.time()))
        if self.pending and self.unlogged is not None:
            self.unlogged.parent.mkdir(parents=True, exist_ok=True)
            self.load_unlogged()  # what an earlier drain of this study left there, first
            self.unlogged.write_text(json.dumps({"parent": self.parent, "records": self.pending}, default=str))
            self.say(f"MLflow at {self.uri} did not answer: {len(self.pending)} records are kept in {self.unlogged} "
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
                run_id = self.client.create_run(experiment, run_name=self.run_name(trial_id, config),
                                                tags=tags).info.run_id
                self.synced.add(trial_id)  # new: it holds no epoch
            self.runs[trial_id] = run_id
        if trial_id not in self.synced:  # the epochs its run holds: a state restored after a crash can be behind
            history = self.client.get_metric_history(self.runs[trial_id], self.metric)
            self.logged[trial_id] = max((m.step for m in history), default=0)
            self.synced.add(trial_id)
        return self.runs[trial_id]

    def run_name(self, trial_id: str, config: dict) -> str:
        """What the runs table shows of a trial: its number in the live view and what it tries, e.g.
        `#4 name=sgd lr=0.0312 label_smoothing=0.08` (its Ray trial id when it has no number)."""
        number = self.numbers.get(trial_id)
        values = " ".join(f"{key.rsplit('.', 1)[-1]}={f'{v:.3g}' if isinstance(v, float) else v}"
                          for key, v in sorted(config.items()))
        return f"#{number} {values}".strip() if number else f"{self.study}_{trial_id}"

    def _log_start(self, trial_id: str, config: dict) -> None:
        run_id = self._run_of(trial_id, config)
        trial = resolve_trial(self.base, config)
        trial.model = with_weights(trial.model)  # the file it starts from, as the trial finds it (checked before)
        resolved = trial.model_dump(mode="json")
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
        # four decimals, as the live view and the summary show them (the runs table would show eight)
        self.client.log_batch(run_id, metrics=[Metric(f"best_{k}", round(float(v), 4), at, 0)
                                               for k, v in best.items()])
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
        scored = scored[scored["outcome"] != outcomes.CUT] if len(scored) else scored
        if anytime:
            self.client.log_figure(self.parent, anytime_figure(anytime, self.metric, budget_s), "anytime.png")
            plt.close("all")
        if len(scored):
            best_row = scored.sort_values(f"best_{self.metric}", ascending=self.mode == "min").iloc[0]
            self.client.set_tag(self.parent, "tune.best_trial_id", best_row["trial_id"])
            self.client.log_metric(self.parent, f"best_{self.metric}", float(best_row[f"best_{self.metric}"]))
        self.client.set_terminated(self.parent, "FINISHED")


LOST_RUNS = "tune.lost_runs"  # on the study's parent run: the trial runs deleted by `drop_lost_runs`


def drop_lost_runs(client: MlflowClient, parent: str, restored: set[str]) -> list[str]:
    """After an interrupted round is finished: a trial run still RUNNING whose trial the restored round does not
    hold (`restored`: its Ray trial ids) is of a trial that Ray started after it last saved the round, its driver
    then killed; Ray ran that configuration again as a new trial. Like the Optuna orphans, such runs are not
    trials of the study: they are deleted (MLflow keeps them as deleted runs), listed on the parent run, and
    never counted. Returns their run ids."""
    lost = [run.info.run_id for run in trial_runs(client, parent)
            if run.info.status == "RUNNING" and run.data.tags.get("ray.trial_id") not in restored]
    for run_id in lost:
        client.set_terminated(run_id, "KILLED")
        client.delete_run(run_id)
    if lost:
        earlier = client.get_run(parent).data.tags.get(LOST_RUNS, "")
        client.set_tag(parent, LOST_RUNS, ",".join(filter(None, [earlier, *lost])))
    return lost

"""Report on a study from its MLflow runs: the best trials, every trial's learning curve, parameter importance.

Reads the study's parent run (the search space, from its study.yaml) and the child runs (one per Ray trial:
the tag tune.outcome, the sampled params, the metric per epoch), prints the report and logs it to the
parent run, where the MLflow UI shows it:

    report.md               the printed report, in Markdown
    best_trials.json        the best trials, a table in MLflow's format (replaced by each report)
    learning_curves.png     the metric per epoch of every trial
    param_importance.json   Optuna's parameter importances, and the params left out of them
    param_importance.png    the same as bars; the parent run also gets the metrics importance.<param>

Works on a partly finished study: trials with no outcome yet show as `unfinished`. Parameter importance
is Optuna's default evaluator (PED-ANOVA) over an in-memory Optuna study holding each finished or
early-stopped trial with its sampled params and its best value. It covers the params every one of those
trials sampled: a param of a conditional branch (say optimizer.momentum under optimizer.name = sgd) is
left out, and the report names it.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import optuna
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Run
from mlflow.exceptions import MlflowException
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from pydantic import ValidationError

from trainables.config import UserError
from tune import outcomes, space, tracking
from tune.config import StudyConfig
from tune.figures import curves_figure, importance_figure

MISSING = object()  # a param the trial did not sample (None is a valid choice)
SCORED = (outcomes.FINISHED, outcomes.STOPPED_EARLY)  # the outcomes whose best value counts for importance
SCORED_TEXT = "finished or early-stopped trials"


@dataclass
class TrialRow:
    trial_id: str
    run_id: str
    outcome: str
    curve: list[tuple[int, float]]  # (epoch, value), one per epoch
    params: dict[str, Any] = field(default_factory=dict)  # the sampled values, by their Optuna names
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    best: float | None = None
    best_epoch: int | None = None


def report_study(study: str, uri: str, top: int = 10, metric: str = "val_f1", mode: str = "max") -> str:
    """Write the study's report to its parent run and return it as text."""
    client = open_store(uri)
    pid = study_run(client, study, uri).info.run_id
    nodes, space_note = study_space(client, pid)
    rows = trial_rows(client, tracking.trial_runs(client, pid), nodes or [], metric, mode)
    rows.sort(key=lambda r: (r.best is None, 0.0 if r.best is None else (-r.best if mode == "max" else r.best)))
    counts = Counter(r.outcome for r in rows)
    summary = f"study {study}: {len(rows)} trials ({', '.join(f'{n} {o}' for o, n in sorted(counts.items()))})"
    notes = [f"note: {space_note}; the report shows no sampled params"] if space_note else []
    shown = [r for r in rows if r.best is not None][:top]
    best = table(shown, [n for n in space.param_names(nodes or []) if any(n in r.params for r in shown)], metric)
    heading = (f"best {len(shown)} of {len(rows)} trials by {metric} ({mode}):" if shown
               else f"no trial has reported {metric} yet")
    importance = param_importance(rows, mode)
    importance_lines = describe_importance(importance, metric)

    logged = ["report.md", "param_importance.json"]
    client.log_dict(pid, {"metric": metric, "mode": mode, **importance}, "param_importance.json")
    if shown:
        tracking.log_table(client, pid, best, "best_trials.json")
        logged.append("best_trials.json")
    if any(r.curve for r in rows):
        client.log_figure(pid, curves_figure(rows, study, metric), "learning_curves.png",
                          save_kwargs={"bbox_inches": "tight"})
        logged.append("learning_curves.png")
    if importance["importances"]:
        now = int(time.time() * 1000)
        client.log_batch(pid, metrics=[Metric(f"importance.{k}", v, now, 0)
                                       for k, v in importance["importances"].items()])
        client.log_figure(pid, importance_figure(importance["importances"], study, metric), "param_importance.png",
                          save_kwargs={"bbox_inches": "tight"})
        logged.append("param_importance.png")
    plt.close("all")
    markdown = [f"# {summary}", *notes, "", heading, ""]
    markdown += [markdown_table(best), ""] if shown else []
    markdown += ["Parameter importance:", "", *[f"    {line}" for line in importance_lines], ""]
    client.log_text(pid, "\n".join(markdown), "report.md")
    text = [summary, *notes, heading, *([aligned(best)] if shown else []), *importance_lines,
            f"logged to the study's MLflow run {pid}: {', '.join(logged)}"]
    return "\n".join(text)


def open_store(uri: str) -> MlflowClient:
    """A client of an existing store: reporting never creates one."""
    if not tracking.store_exists(uri):
        raise UserError(f"no MLflow store at {uri}: run a study first, or pass --tracking-uri")
    return MlflowClient(uri)


def study_run(client: MlflowClient, study: str, uri: str) -> Run:
    parent = tracking.find_study_run(client, study)
    if parent is None:
        known = study_names(client)
        raise UserError(f"no study named {study!r} in {uri}; known studies: {', '.join(known) or 'none'}")
    return client.get_run(parent)


def study_names(client: MlflowClient) -> list[str]:
    """The names of the studies in the store (experiments with a study's parent run)."""
    names = {e.experiment_id: e.name for e in client.search_experiments()}
    runs = client.search_runs(list(names), "tags.`tune.role` = 'study'") if names else []
    return sorted({names[r.info.experiment_id] for r in runs})


def study_space(client: MlflowClient, run_id: str) -> tuple[list | None, str | None]:
    """The study's search space (tune.space nodes) from the parent run's study.yaml, else None and why."""
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one small file: no progress bar
    try:
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(client.download_artifacts(run_id, "study.yaml", tmp)).read_text()
    except (MlflowException, OSError) as e:
        return None, f"the study's study.yaml could not be read ({type(e).__name__})"
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous
    try:
        study = StudyConfig.model_validate(yaml.safe_load(text))
        return space.parse_space(study.space, study.trial_base(), "study.yaml of the study's run"), None
    except (ValidationError, UserError, yaml.YAMLError) as e:
        return None, f"the study's search space could not be read ({str(e).splitlines()[0]})"


def sampled(nodes: list, params: dict[str, str]) -> tuple[dict[str, Any], dict[str, BaseDistribution]]:
    """The values a trial sampled (read back from its MLflow params) and their Optuna distributions."""
    values: dict[str, Any] = {}
    dists: dict[str, BaseDistribution] = {}
    for node in nodes:
        if isinstance(node, space.Param):
            dist = node.distribution()
            value = _read(params.get(node.path), dist)
            if value is not MISSING:
                values[node.path], dists[node.path] = value, dist
        elif isinstance(node, space.Branching):
            name = params.get(f"{node.path}.name")
            if name in node.branches:  # the same distribution SpaceSampler suggests the branch from
                values[f"{node.path}.name"] = name
                dists[f"{node.path}.name"] = CategoricalDistribution(list(node.branches))
                sub_values, sub_dists = sampled(node.branches[name], params)
                values.update(sub_values)
                dists.update(sub_dists)
    return values, dists


def _read(text: str | None, dist: BaseDistribution) -> Any:
    """An MLflow param (a string) as a value of `dist`, or MISSING."""
    if text is None:
        return MISSING
    if isinstance(dist, CategoricalDistribution):
        for choice in dist.choices:
            if text in (str(choice), json.dumps(choice)) or _same_number(text, choice):
                return choice
        return MISSING
    try:
        value = int(float(text)) if isinstance(dist, IntDistribution) else float(text)
    except ValueError:
        return MISSING
    return value if dist.low <= value <= dist.high else MISSING


def _same_number(text: str, choice: Any) -> bool:
    if isinstance(choice, bool) or not isinstance(choice, (int, float)):
        return False
    try:
        return float(text) == float(choice)
    except ValueError:
        return False


def trial_rows(client: MlflowClient, runs: list[Run], nodes: list, metric: str, mode: str) -> list[TrialRow]:
    rows = []
    for run in runs:
        by_epoch: dict[int, float] = {}
        for m in sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: (m.step, m.timestamp)):
            by_epoch[m.step] = m.value  # a resumed trial may report an epoch again: the last one counts
        curve = sorted((step, value) for step, value in by_epoch.items() if math.isfinite(value))
        params, dists = sampled(nodes, run.data.params)
        row = TrialRow(run.data.tags.get("ray.trial_id", run.info.run_id), run.info.run_id,
                       run.data.tags.get("tune.outcome", "unfinished"), curve, params, dists)
        if curve:
            pick = max if mode == "max" else min
            row.best_epoch, row.best = pick(curve, key=lambda c: (c[1], -c[0]) if mode == "max" else (c[1], c[0]))
        rows.append(row)
    return rows


def table(rows: list[TrialRow], names: list[str], metric: str) -> pd.DataFrame:
    return pd.DataFrame([{"trial_id": r.trial_id, "outcome": r.outcome, f"best_{metric}": r.best,
                          "best_epoch": r.best_epoch, "epochs": len(r.curve),
                          **{n: r.params.get(n) for n in names}} for r in rows])


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cells(frame: pd.DataFrame) -> list[list[str]]:
    metric = [c for c in frame.columns if c.startswith("best_") and c != "best_epoch"]
    rows = []
    for record in frame.astype(object).to_dict("records"):
        rows.append([f"{v:.4f}" if c in metric and isinstance(v, float) and not math.isnan(v) else _cell(v)
                     for c, v in record.items()])
    return [list(map(str, frame.columns))] + rows


def aligned(frame: pd.DataFrame) -> str:
    cells = _cells(frame)
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def markdown_table(frame: pd.DataFrame) -> str:
    cells = _cells(frame)
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join([lines[0], "|" + "---|" * len(cells[0]), *lines[1:]])


def param_importance(rows: list[TrialRow], mode: str) -> dict:
    """Optuna's importances of the params every scored trial sampled; the params left out and why."""
    done = [r for r in rows if r.outcome in SCORED and r.best is not None and r.params]
    out: dict[str, Any] = {"evaluator": "optuna PedAnovaImportanceEvaluator (default)", "trials": len(done),
                           "importances": {}, "left_out": [], "constant": [], "note": None}
    if len(done) < 2:
        out["note"] = f"needs at least 2 {SCORED_TEXT}, the study has {len(done)}"
        return out
    names = list(dict.fromkeys(n for r in done for n in r.params))
    common = [n for n in names if all(n in r.params for r in done)]
    varying = [n for n in common if len({json.dumps(r.params[n]) for r in done}) > 1]
    out["left_out"] = [n for n in names if n not in common]
    out["constant"] = [n for n in common if n not in varying]
    if not varying:
        out["note"] = f"no param sampled by all {len(done)} {SCORED_TEXT} takes different values in them"
        return out
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():  # few trials: Optuna warns that its estimate is rough
            warnings.simplefilter("ignore")
            study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
            for r in done:
                study.add_trial(optuna.trial.create_trial(params=r.params, distributions=r.distributions,
                                                          value=r.best))
            importances = optuna.importance.get_param_importances(study, params=varying)
    finally:
        optuna.logging.set_verbosity(verbosity)
    out["importances"] = {k: float(v) for k, v in importances.items()}
    return out


def describe_importance(info: dict, metric: str) -> list[str]:
    if not info["importances"]:
        return [f"parameter importance: not computed: {info['note']}"]
    width = max(map(len, info["importances"]))
    lines = [f"parameter importance for {metric} (Optuna's PED-ANOVA over {info['trials']} {SCORED_TEXT}):"]
    lines += [f"  {name.ljust(width)}  {value:.3f}" for name, value in info["importances"].items()]
    if info["left_out"]:
        lines.append(f"left out (not sampled by all of them): {', '.join(info['left_out'])}")
    if info["constant"]:
        lines.append(f"left out (the same in all of them): {', '.join(info['constant'])}")
    return lines



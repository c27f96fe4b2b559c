"""tune report on a small MLflow store written here the way StudyTracker writes one (no Ray: fast).

tests/test_study.py runs `tune report` on a real study too.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric

from tune import space, tracking
from tune.cli import main
from tune.config import StudyConfig
from tune.report import TrialRow, param_importance

SPACE = {"model.backbone": {"choice": ["resnet18", "resnet34"]},
         "optimizer": {"choice": {"sgd": {"lr": {"loguniform": [1.0e-3, 0.1]}, "momentum": {"uniform": [0.8, 0.95]}},
                                  "adamw": {"lr": {"loguniform": [1.0e-4, 1.0e-2]}}}}}
TRIALS = [  # trial id, outcome (None: still running), sampled params, val_f1 per epoch
    ("t1", "finished", {"model.backbone": "resnet18", "optimizer.name": "sgd", "optimizer.lr": 0.01,
                        "optimizer.momentum": 0.9}, [0.2, 0.5, 0.45]),
    ("t2", "stopped_early", {"model.backbone": "resnet34", "optimizer.name": "adamw", "optimizer.lr": 0.001},
     [0.1]),
    ("t3", "finished", {"model.backbone": "resnet34", "optimizer.name": "sgd", "optimizer.lr": 0.05,
                        "optimizer.momentum": 0.85}, [0.3, 0.35, 0.6]),
    ("t4", "failed", {"model.backbone": "resnet18", "optimizer.name": "adamw", "optimizer.lr": 0.005}, [0.05]),
    ("t5", None, {"model.backbone": "resnet18", "optimizer.name": "adamw", "optimizer.lr": 0.0002}, [0.15, 0.2]),
]


def write_study(client: MlflowClient, root: Path, name: str, trials: list) -> str:
    study = StudyConfig.model_validate({"name": name, "task": "all", "space": SPACE})
    nodes = space.parse_space(study.space, study.trial_base(), name)
    client.create_experiment(name, artifact_location=str(root / "artifacts" / name))
    parent = tracking.start_study_run(client, name, yaml.safe_dump(study.model_dump(mode="json")),
                                      space.describe(nodes), {"search": study.search.model_dump()})
    experiment = client.get_run(parent).info.experiment_id
    for trial_id, outcome, params, curve in trials:
        tags = {"mlflow.parentRunId": parent, "ray.trial_id": trial_id, "tune.role": "trial"}
        if outcome:
            tags["tune.outcome"] = outcome
        run_id = client.create_run(experiment, run_name=f"{name}_{trial_id}", tags=tags).info.run_id
        config = {"model.backbone": "resnet18", "optimizer.name": "adamw", "optimizer.lr": 0.001,
                  "optimizer.momentum": 0.9, "task": "all"}  # every key of the config, sampled or not
        tracking.log_params(client, run_id, config | params)
        client.log_batch(run_id, metrics=[Metric("val_f1", v, 0, epoch) for epoch, v in enumerate(curve, 1)])
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    write_study(client, root, "fake", TRIALS)
    write_study(client, root, "lonely", [TRIALS[0], TRIALS[3]])  # one finished, one failed
    return uri, root


def artifacts(uri: str, study: str) -> tuple[MlflowClient, str, set[str]]:
    client = MlflowClient(uri)
    parent = tracking.find_study_run(client, study)
    return client, parent, {a.path for a in client.list_artifacts(parent)}


def test_report_ranks_trials_plots_them_and_logs_importance(store, capsys):
    uri, root = store
    assert main(["report", "fake", "--tracking-uri", uri, "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "5 trials (1 failed, 2 finished, 1 stopped_early, 1 unfinished)" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("trial_id"))
    assert lines[header].split() == ["trial_id", "outcome", "best_val_f1", "best_epoch", "epochs", "model.backbone",
                                     "optimizer.name", "optimizer.lr", "optimizer.momentum"]
    assert [line.split()[:4] for line in lines[header + 1 : header + 4]] == [
        ["t3", "finished", "0.6000", "3"], ["t1", "finished", "0.5000", "2"], ["t5", "unfinished", "0.2000", "2"]]
    assert "left out (not sampled by all of them): optimizer.momentum" in out

    client, parent, logged = artifacts(uri, "fake")
    assert {"report.md", "best_trials.json", "learning_curves.png", "param_importance.json",
            "param_importance.png"} <= logged
    table = json.loads(Path(client.download_artifacts(parent, "best_trials.json", str(root))).read_text())
    assert [row[0] for row in table["data"]] == ["t3", "t1", "t5"]
    importance = json.loads(Path(client.download_artifacts(parent, "param_importance.json", str(root))).read_text())
    assert importance["trials"] == 3  # finished and stopped early: not the failed or the unfinished trial
    assert set(importance["importances"]) == {"model.backbone", "optimizer.name", "optimizer.lr"}
    assert sum(importance["importances"].values()) == pytest.approx(1.0)
    metrics = client.get_run(parent).data.metrics
    assert {f"importance.{k}" for k in importance["importances"]} <= set(metrics)

    assert main(["report", "fake", "--tracking-uri", uri, "--top", "1"]) == 0  # a second report replaces the table
    table = json.loads(Path(client.download_artifacts(parent, "best_trials.json", str(root))).read_text())
    assert [row[0] for row in table["data"]] == ["t3"]


def test_too_few_trials_for_importance_is_one_line(store, capsys):
    uri, _ = store
    assert main(["report", "lonely", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "parameter importance: not computed: needs at least 2 finished or early-stopped trials, the study has 1" \
        in out
    assert "param_importance.png" not in artifacts(uri, "lonely")[2]


def test_importance_without_varying_params_is_one_line():
    dist = space.Param("model.backbone", "choice", ["a", "b"]).distribution()
    rows = [TrialRow(f"t{i}", f"r{i}", "finished", [(1, v)], {"model.backbone": "a"}, {"model.backbone": dist}, v, 1)
            for i, v in enumerate([0.1, 0.2])]
    info = param_importance(rows, "max")
    assert info["importances"] == {} and info["constant"] == ["model.backbone"] and "no param" in info["note"]


def test_unknown_study_or_store_is_a_user_error(store, capsys, tmp_path):
    uri, _ = store
    assert main(["report", "nope", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: no study named 'nope' in {uri}; known studies: fake, lonely"
    missing = tmp_path / "none" / "mlflow.db"
    assert main(["report", "fake", "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert "no MLflow store" in capsys.readouterr().err and not missing.parent.exists()
    assert main(["report", "fake", "--tracking-uri", uri, "--top", "0"]) == 2

"""tune ui: a real MLflow UI server on 127.0.0.1, opened on a study's trials (its saved view), never the GenAI home."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from mlflow import MlflowClient

from tests.conftest import ROOT
from tune.cli import main
from tune.tracking import VIEW, connect, experiment_id, start_study_run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[str]:
    """The command lines of `pid`'s child processes, theirs, and so on."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = (int(stat[stat.rfind(")") + 2:].split()[1]),
                                        (entry / "cmdline").read_text().replace("\0", " "))
        except (ValueError, OSError):
            continue
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = [child for child, (ppid, _) in parents.items() if ppid == parent]
        found += [parents[child][1] for child in children]
        todo += children
    return found


def test_ui_opens_on_the_study_trials_best_first(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    client = connect(uri)
    for name in ("older", "newer"):  # studies written before views were saved: tune ui saves one
        start_study_run(client, name, "name: x\n", [], {})
    assert main(["ui", "--study", "nothere", "--tracking-uri", uri]) == 2
    assert "no study named 'nothere'" in capsys.readouterr().err

    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "tune", "ui", "--tracking-uri", uri, "--port", str(port)],
                          cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    try:
        first = ui.stdout.readline()  # the server's own lines go to its log: the person sees this one first
        assert first.startswith("MLflow UI: "), first
        url = first.split(": ", 1)[1].strip()
        newer = MlflowClient(uri).get_experiment_by_name("newer")
        assert url == (f"http://127.0.0.1:{port}/#/experiments/{newer.experiment_id}/runs"
                       f"?workflowType=machine_learning&viewStateShareKey={VIEW}")
        # the server answers there (on a loaded machine its first page can take seconds)
        assert urllib.request.urlopen(url.split("#")[0], timeout=60).status == 200
        running = descendants(ui.pid)  # the UI's server, without MLflow's job runner and its seven consumers
        assert any("mlflow" in cmd for cmd in running) and not any("huey" in cmd or "job_runner" in cmd
                                                                   for cmd in running), running
        assert main(["ui", "--tracking-uri", uri, "--port", str(port)]) == 2  # a second one on that port
        assert f"port {port} is taken" in capsys.readouterr().err
    finally:
        ui.terminate()
        _, errors = ui.communicate(timeout=30)
    assert errors == "", errors  # nor MLflow's, Uvicorn's and Starlette's warnings
    assert "Uvicorn" in (tmp_path / "mlruns" / "logs" / "ui.log").read_text() or "uvicorn" in (
        tmp_path / "mlruns" / "logs" / "ui.log").read_text()
    with socket.socket() as s:  # stopping tune ui stopped the server and its workers too
        assert s.connect_ex(("127.0.0.1", port)) != 0
    view = json.loads(newer.tags[f"mlflow.sharedViewState.{VIEW}"])
    state = json.loads(view["state"])
    assert state["orderByKey"] == "metrics.`best_val_f1`" and state["orderByAsc"] is False
    assert "metrics.`best_val_f1`" in state["selectedColumns"] and "tags.`tune.outcome`" in state["selectedColumns"]
    assert newer.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment_id(client, "older")  # the other study is left as it was
    assert f"mlflow.sharedViewState.{VIEW}" not in MlflowClient(uri).get_experiment_by_name("older").tags

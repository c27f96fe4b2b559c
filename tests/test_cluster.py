"""A study on a real two-node Ray cluster, its storage on a real S3-API server (SeaweedFS), tracked by a real
`mlflow server`, through a lost node and a tracking outage. Everything listens on 127.0.0.1; Ray's token
authentication is on."""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import requests
from mlflow import MlflowClient

from tests.test_study import here, tune_cmd

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]  # one worker: one cluster, S3, MLflow
BIN = Path(sys.executable).parent

STUDY = """
name: team
task: all
model: {backbone: test_resnet, image_size: 64}
train: {epochs: 4, batch_size: 16, num_workers: 0}
space: {optimizer.lr: {loguniform: [1.0e-3, 1.0e-2]}}
search: {algorithm: random, seed: 0, num_samples: 2, max_concurrent: 2, max_failures: 2}  # one on each node
scheduler: {name: fifo}
resources: {cpus_per_trial: 1}
"""


def free_port(offset: int = 0) -> int:
    """A free port on 127.0.0.1 (and `offset` above it: SeaweedFS serves gRPC at port + 10000)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + offset < 65536 and (not offset or _free(port + offset)):
            return port


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_for(url: str, timeout: float = 60, proc: subprocess.Popen | None = None) -> None:
    """Until `url` answers; TimeoutError after `timeout` seconds, or as soon as `proc` (its server) has exited."""
    deadline = time.time() + timeout
    while time.time() < deadline and (proc is None or proc.poll() is None):
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.3)
    raise TimeoutError(url)


class SeaweedFS:
    """SeaweedFS's S3 API on 127.0.0.1, with credentials (set in this process's environment, so that the
    processes it starts reach the bucket) and a bucket `studies`; `uri` is a storage URI in it."""

    def __init__(self, folder: Path):
        keys = {"AWS_ACCESS_KEY_ID": "tune-test", "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16)}
        for attempt in range(3):  # a port taken between free_port and weed's bind ends weed: new ports, again
            port = free_port(10000)
            ports = {f"-{name}.port": free_port(10000) for name in ("master", "volume", "filer", "admin")}
            args = [str(BIN / "weed"), "mini", f"-dir={folder / str(attempt)}", "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1", "-bucket=studies", f"-s3.port={port}", "-s3.port.iceberg=0",
                    "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", *(f"{k}={v}" for k, v in ports.items())]
            (folder / str(attempt)).mkdir()
            log = folder / f"weed-{attempt}.log"
            with log.open("w") as out:
                self.proc = subprocess.Popen(args, env={**os.environ, **keys}, cwd=folder, stdout=out,
                                             stderr=subprocess.STDOUT)
            try:  # weed mini starts four servers: slow on 2 busy cores
                wait_for(f"http://127.0.0.1:{port}", timeout=120, proc=self.proc)
                break
            except TimeoutError:
                self.proc.kill()
                self.proc.wait()
                if attempt == 2:
                    raise TimeoutError(f"SeaweedFS did not answer on port {port}: {log.read_text()[-2000:]}") from None
        os.environ.update(keys)
        self.uri = f"s3://studies/runs?endpoint_override=127.0.0.1:{port}&scheme=http"
        self.fs, _ = pafs.FileSystem.from_uri(self.uri)
        deadline = time.time() + 30
        while time.time() < deadline:  # the bucket is made just after the server answers
            try:
                self.fs.get_file_info(pafs.FileSelector("studies", allow_not_found=True))
                return
            except OSError:
                time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    yield server.uri, server.fs
    server.stop()


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 that serves its artifacts; it can be stopped and started again."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.proc = folder, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # as the README
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                time.sleep(0.5)
        raise TimeoutError("mlflow server did not start")

    def stop(self) -> None:
        """Down, as a server that restarts is: SIGTERM, then SIGKILL where its workers hold on to open connections
        (on a loaded machine uvicorn once took more than 60 s to end after SIGTERM)."""
        os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


# Ray reads RAY_AUTH_MODE when it is imported, so the cluster lives in its own process, started with the token.
CLUSTER = """
import json, sys
from ray.cluster_utils import Cluster
made = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
worker = made.add_node(num_cpus=1)
made.wait_for_nodes()
print(json.dumps({"address": made.address, "head": made.head_node.node_id, "worker": worker.node_id}), flush=True)
for line in sys.stdin:
    if line.strip() == "remove":
        made.remove_node(worker)
        print("removed", flush=True)
made.shutdown()
"""


class RayCluster:
    """Two Ray nodes of one CPU each on this machine (as Ray's own tests make them), with token authentication."""

    def __init__(self, env: dict):
        self.env = env
        self.proc = subprocess.Popen([sys.executable, "-c", CLUSTER], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        info = json.loads(self.proc.stdout.readline())
        self.address, self.head, self.worker = info["address"], info["head"], info["worker"]

    def remove_worker(self) -> None:
        self.proc.stdin.write("remove\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "removed"

    def shutdown(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=120)


@pytest.fixture(scope="module")
def cluster(s3):
    made = RayCluster({**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                       "RAY_DEDUP_LOGS": "0"})
    yield made
    made.shutdown()


def test_a_node_that_cannot_read_the_data_is_named(cluster, tmp_path):
    check = f"""
import ray
from tune.config import StudyConfig
from tune.search.checks import check_nodes
ray.init(address="{cluster.address}")
check_nodes(StudyConfig.model_validate({{"name": "x", "data": {{"root": "{tmp_path / 'missing'}"}}}}), [])
"""
    done = subprocess.run([sys.executable, "-c", check], env=cluster.env, capture_output=True, text=True, timeout=120)
    assert re.search(r"UserError: node [\d.]+ \(\w+\): data folder not found: \S*missing\n",
                     done.stderr), done.stderr[-2000:]


@pytest.mark.parametrize("how", ["environment", "uri"])
def test_wrong_s3_credentials_are_one_line_before_anything_runs(how, s3, demo_data, tmp_path, monkeypatch, capsys):
    from tune.cli import main

    uri, _ = s3
    if how == "environment":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    else:
        uri += "&access_key=tune-test&secret_key=not-the-secret"
    path = tmp_path / "team.yaml"
    path.write_text(STUDY)
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(path), "--data", str(demo_data), "--storage", uri]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: storage s3://studies/runs") and "not-the-secret" not in err
    assert not (tmp_path / "mlruns").exists()


def test_study_on_two_nodes_with_s3_storage_and_a_tracking_server(cluster, s3, mlflow_server, demo_data, tmp_path):
    storage, fs = s3
    path = tmp_path / "team.yaml"
    path.write_text(STUDY)
    env = cluster.env
    base = ["run", str(path), "--data", str(demo_data), "--address", cluster.address]

    # without the cluster's token, nothing connects (Ray takes 20 s to give up: it is asked now, answered at the end)
    stranger = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")} | {"HOME": str(tmp_path)}
    denied = subprocess.Popen([sys.executable, "-c", f"import ray; ray.init(address='{cluster.address}')"],
                              env=stranger, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    # a cluster of two nodes and storage on this machine only: refused before anything runs
    refused = subprocess.run(tune_cmd(*base), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--storage s3://" in refused.stderr.strip().splitlines()[-1]

    out = tmp_path / "out.txt"
    args = [*base, "--storage", storage, "--tracking-uri", mlflow_server.uri]
    env = {**env, "TUNE_TRACKING_RETRY_S": "1"}  # the tracker tries a server that did not answer again after 1 s

    def printed_within(text: str, seconds: float = 300) -> bool:
        deadline = time.time() + seconds
        while time.time() < deadline and text not in out.read_text() and proc.poll() is None:
            time.sleep(0.2)
        return text in out.read_text()

    with out.open("w") as stdout:
        proc = subprocess.Popen(tune_cmd(*args), cwd=tmp_path, env=env, stdout=stdout, stderr=subprocess.STDOUT)
        assert printed_within("#2 epoch 2/4") and printed_within("#1 epoch 2/4"), out.read_text()[-3000:]
        assert proc.poll() is None
        cluster.remove_worker()  # the second machine is lost mid-study: its trial goes on on the head
        assert printed_within("lost its process"), out.read_text()[-3000:]
        mlflow_server.stop()  # the tracking server restarts: down until the study has noticed it
        assert printed_within("does not answer: the study goes on"), out.read_text()[-3000:]
        mlflow_server.start()
        assert proc.wait(timeout=400) == 0, out.read_text()[-3000:]
    printed = out.read_text()
    assert "checking the data on 1 other node(s)" in printed
    assert "MLflow at" in printed and "answers again" in printed
    assert "lost its process" in printed

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("team")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("tune.role") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == 2
    nodes = set()
    for child in children:  # every trial finished, every epoch logged once, the code Ray shipped
        assert child.data.tags["tune.outcome"] == "finished"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_f1")] == [1, 2, 3, 4]
        assert "runtime_resources" in child.data.tags["tune.code"], child.data.tags["tune.code"]
        nodes |= set(child.data.tags["ray.node_ids"].split(","))
    assert {cluster.head, cluster.worker} <= nodes  # trials ran on both machines

    # nothing on this machine's disk: the study is in the bucket, and export and resume read it from there
    assert not (tmp_path / "mlruns" / "ray").exists()
    assert fs.get_file_info("studies/runs/team").type == pafs.FileType.Directory
    export = tmp_path / "export"
    here(tmp_path, "export", "team", "--out", str(export), "--tracking-uri", mlflow_server.uri)  # reads s3://
    best = json.loads((export / "metrics.json").read_text())["ray_trial_id"]
    (trial_run,) = [c for c in children if c.data.tags["ray.trial_id"] == best]
    ref = f"runs:/{trial_run.info.run_id}/export"  # another member scores it, downloaded through the server
    assert "macro F1" in here(tmp_path, "evaluate", "--model", ref, "--data", str(demo_data), "--tracking-uri",
                              mlflow_server.uri)
    (downloaded,) = [p.parent for p in (tmp_path / "mlruns" / "downloads").rglob("config.yaml")]
    for name in ("model.safetensors", "config.yaml", "metrics.json"):  # byte for byte what was exported
        assert (downloaded / name).read_bytes() == (export / name).read_bytes()

    # the study grows by a trial from s3:// (one node is left), its driver is killed mid-round, and --resume
    # restores it from there
    grown = tmp_path / "grown.txt"
    with grown.open("w") as stdout:
        proc = subprocess.Popen(tune_cmd(*args, "--resume", "--num-samples", "3"), cwd=tmp_path, env=env,
                                stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and "#3 epoch 2/4" not in grown.read_text() and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, grown.read_text()[-3000:]  # killed while its round runs
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert "has 2 trials: 1 more" in grown.read_text(), grown.read_text()[-3000:]
    round_trials = {t.data.tags["ray.trial_id"] for t in client.search_runs(
        [experiment.experiment_id], "tags.`tune.role` = 'trial'")} - {c.data.tags["ray.trial_id"] for c in children}
    assert round_trials, "the killed round had started no trial"
    resumed = subprocess.run(tune_cmd(*args, "--resume"), cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "study team: restoring its interrupted round (2 trials ended" in resumed.stdout, resumed.stdout
    assert "were running) from s3://studies/runs?" in resumed.stdout
    trials = client.search_runs([experiment.experiment_id], "tags.`tune.role` = 'trial'")
    assert round_trials <= {t.data.tags["ray.trial_id"] for t in trials}  # the killed round's own trials went on
    assert len(trials) == 3 and {t.data.tags["tune.outcome"] for t in trials} == {"finished"}
    for trial in trials:
        assert [m.step for m in client.get_metric_history(trial.info.run_id, "val_f1")] == [1, 2, 3, 4]
    assert not (tmp_path / "mlruns" / "ray").exists()
    _, errors = denied.communicate(timeout=120)
    assert denied.returncode != 0 and re.search(r"AuthenticationError|UNAUTHENTICATED|[Aa]uthentication token",
                                                errors), errors[-2000:]  # refused as a stranger


def test_records_the_server_never_took_are_kept_for_the_next_resume(mlflow_server, tmp_path, monkeypatch):
    from tune import tracking
    from tune.search.tracker import StudyTracker

    client = MlflowClient(mlflow_server.uri)
    parent = tracking.start_study_run(client, "outage", "name: outage\n", [], {})
    unlogged = tmp_path / "outage.unlogged.json"
    base = {"task": "all", "model": {"backbone": "test_resnet", "image_size": 32}}
    # down for the whole study: the server's address with nothing listening there (what a stopped server is, without
    # the minute a real one takes to stop and start again); nothing is logged, nothing is lost
    down = f"http://127.0.0.1:{free_port()}"
    tracker = StudyTracker(down, "outage", parent, base, 2, "val_f1", "max", unlogged=unlogged)
    tracker.RETRY_S, tracker.DRAIN_S = 0.5, 2.0
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as tracking.quiet_retries sets them for a study
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    tracker._record("start", "t1", config={"optimizer.lr": 0.01})
    for epoch in (1, 2):
        tracker._record("result", "t1", config={"optimizer.lr": 0.01}, epoch=epoch, metrics={"val_f1": 0.1 * epoch},
                        at=1000 * epoch, node="n1", code="here")
    tracker.drain()
    assert json.loads(unlogged.read_text())["parent"] == parent and not tracker.runs
    assert not tracking.trial_runs(client, parent)  # nothing reached the server

    later = StudyTracker(mlflow_server.uri, "outage", parent, base, 2, "val_f1", "max", unlogged=unlogged)
    later.load_unlogged()
    later.drain()  # the next --resume: logged in order, once
    later.load_unlogged()
    later.drain()
    assert not unlogged.exists()
    (child,) = tracking.trial_runs(client, parent, "t1")
    assert [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, "val_f1")] == [(1, 0.1), (2, 0.2)]
    assert child.data.params["optimizer.lr"] == "0.01" and child.data.tags["ray.node_ids"] == "n1"

"""What a cluster costs and gives: one study on one node against the same study on two, and a retried trial.

    .venv/bin/python benchmarks/cluster.py            (about 6 minutes on 2 cores)

(a) one node: `tune run` on a local Ray with this machine's CPUs, storage and MLflow on its disk;
(b) two nodes: the same study on a two-node Ray cluster (Ray's cluster_utils, the machine's CPUs split between
    them), its storage on a SeaweedFS S3 server and its tracking on an `mlflow server`, as a team runs it;
(c) a retried trial: one trial alone, then the same trial with its process killed (SIGKILL) after its second
    epoch; the difference is what the retry from the last checkpoint costs.
On one machine (b) measures the cluster's overhead (shipping code, checkpoints through S3, tracking through
HTTP), not the speed-up of a second machine's CPUs or GPUs. The study is the demo data's (60 persons, test_resnet
at 64 px). Writes benchmarks/results/cluster-<device>.json.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_cluster import MlflowServer, RayCluster, SeaweedFS  # noqa: E402 - the tests' real servers
from tune.demo_data import write_demo  # noqa: E402

STUDY = """
task: all
model: {{backbone: test_resnet, image_size: 64}}
train: {{epochs: 8, batch_size: 16, num_workers: 0}}
space: {{optimizer.lr: {{loguniform: [1.0e-3, 1.0e-2]}}}}
search: {{algorithm: random, seed: 0, num_samples: {samples}, max_concurrent: {concurrent}}}
scheduler: {{name: fifo}}
resources: {{cpus_per_trial: 1}}
"""


def tune_run(work: Path, name: str, samples: int, concurrent: int, *args: str, env: dict | None = None,
             kill_after: str | None = None) -> float:
    """Wall seconds of one `tune run` in `work`; with `kill_after`, its trial's process is killed once that
    text is printed."""
    study = work / f"{name}.yaml"
    study.write_text(STUDY.format(samples=samples, concurrent=concurrent))
    out = work / f"{name}.log"
    command = [sys.executable, "-m", "tune", "run", str(study), "--data", str(work / "demo" / "train"), *args]
    start = time.time()
    with out.open("w") as log:
        proc = subprocess.Popen(command, cwd=work, env=env or os.environ, stdout=log, stderr=subprocess.STDOUT)
        while kill_after and kill_after not in out.read_text() and proc.poll() is None:
            time.sleep(0.1)
        if kill_after:
            pids = subprocess.run(["pgrep", "-f", "ray::ImplicitFunc.train"], capture_output=True, text=True)
            for pid in pids.stdout.split():
                os.kill(int(pid), signal.SIGKILL)
        if proc.wait() != 0:
            raise SystemExit(f"{name} failed: see {out}")
    return round(time.time() - start, 1)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    os.environ["TUNE_CACHE_DIR"] = str(work / "cache")
    write_demo(work / "demo", persons=60, seed=1, progress=False)
    results = {"device": f"cpu-{os.cpu_count()}cores", "python": platform.python_version(),
               "study": "4 trials x 8 epochs, 2 at a time, 1 CPU each, demo data (60 persons), test_resnet 64 px"}
    results["one_node_s"] = tune_run(work, "one", 4, 2)
    for folder in ("s3", "mlflow"):
        (work / folder).mkdir()
    s3, server = SeaweedFS(work / "s3"), MlflowServer(work / "mlflow")
    server.start()
    cluster = RayCluster({**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(32).hex()})
    try:
        results["two_nodes_s3_mlflow_server_s"] = tune_run(
            work, "two", 4, 2, "--address", cluster.address, "--storage", s3.uri, "--tracking-uri", server.uri,
            env=cluster.env)
    finally:
        cluster.shutdown()
        server.stop()
        s3.stop()
    results["one_trial_s"] = tune_run(work, "alone", 1, 1)
    results["one_trial_killed_once_s"] = tune_run(work, "killed", 1, 1, kill_after="epoch 2/8")
    results["retry_overhead_s"] = round(results["one_trial_killed_once_s"] - results["one_trial_s"], 1)
    out = ROOT / "benchmarks" / "results" / f"cluster-{results['device']}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

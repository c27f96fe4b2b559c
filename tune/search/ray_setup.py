"""Ray on this machine or a cluster: its start, what it gives the trials, and where its output goes.

Every node gets this project's `trainables` from Ray (runtime_env py_modules): no path on the nodes is assumed.
Without `--verbose` the log records of Ray, Optuna and MLflow go to the study's log file (`quiet_logs`), and
the person sees the live view alone.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import ray

from trainables.config import UserError
from tune import storage
from tune.search import private
from tune.storage import Storage

LOG_DIR = Path("mlruns") / "logs"  # the driver's log records (Ray, Optuna, MLflow), one file per study
LOGGERS = ("ray", "optuna", "mlflow", "alembic", "py.warnings")
TRAINABLES = Path(__file__).resolve().parents[2] / "trainables"  # the code Ray ships to every node
_handler: logging.FileHandler | None = None
# What a study's own Ray on this machine starts with: its processes, the trials' among them, read it from the
# environment they inherit (a cluster's nodes keep what their `ray start` was given). Ray Tune runs a trial in a
# thread of its process, and glibc gives such a thread an arena of its own, made of heaps of at most 64 MiB that
# it hands back to the system and faults in again step after step: one trial on both cores spent 15% more CPU
# on the same epochs than `tune train`, which trains in the main thread's arena, and its epochs took 1.16 times
# as long; with one arena for every thread, 0.995 to 1.065 (benchmarks/pace_under_ray.py). A MALLOC_ARENA_MAX
# of the person's own is kept. Nor does a study want the idle workers Ray starts for the driver, one per CPU: its
# trials and the timed empty trial run with the study's runtime_env (the project's `trainables`), which those
# workers do not have, so Ray starts others for them; each idle one cost a Python process's start while the first
# trials start, and 83 MB of memory (a 16-core machine: 16 of them).
LOCAL_RAY = {"MALLOC_ARENA_MAX": "1", "RAY_prestart_worker_first_driver": "0"}


def quiet_logs(log_file: Path) -> None:
    """Send the log records of Ray, Optuna and MLflow (and Python warnings) to `log_file` instead of the terminal.

    Call it again after `ray.init`, which takes the handlers off Ray's logger. Records of loggers left without
    a handler go to the file too (Python's last resort), and Ray Tune's status tables are off.
    """
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the new engine prints its tables even when told to be silent
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    global _handler
    if _handler is None or _handler.baseFilename != str(log_file.resolve()):
        log_file.parent.mkdir(parents=True, exist_ok=True)
        _handler = logging.FileHandler(log_file)
        _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler = _handler
    logging.lastResort = handler
    logging.captureWarnings(True)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.INFO)


def start_ray(store: Storage, address: str | None, verbose: bool) -> None:
    """Start a local Ray, or join the cluster at `address`; every node gets this project's `trainables` from Ray
    (runtime_env py_modules: no path on the nodes is assumed). A cluster of several nodes needs storage they all
    reach: local storage is refused before anything runs."""
    if ray.is_initialized():
        return
    if not address:  # a Ray of its own: the raylet it starts reads these from the environment
        for key, value in LOCAL_RAY.items():
            os.environ.setdefault(key, value)
    runtime_env = {"py_modules": [str(TRAINABLES)], "excludes": ["__pycache__"]}
    # without --address a Ray of its own ("local"), never one that RAY_ADDRESS or an earlier `ray start` left
    # a Ray of its own whose workers' output nobody prints needs no log monitor (it polls their log files ten
    # times a second: 1.2% of a core while a trial trained) and no autoscaler monitor
    lean = private.lean_local_ray() if not address and not verbose else contextlib.nullcontext()
    with lean:
        ray.init(address=address or "local", runtime_env=runtime_env, include_dashboard=False,
                 log_to_driver=verbose, configure_logging=False)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) > 1 and store.root == str(storage.LOCAL.resolve()):  # a folder given by --storage: a shared mount
        ray.shutdown()
        raise UserError(f"the Ray cluster at {address} has {len(nodes)} nodes and the study's storage is this "
                        f"machine's {store.root}: pass --storage s3://BUCKET/PREFIX (or a folder every node mounts, "
                        "with --storage /shared/path)")


def cluster_resources() -> tuple[float, float | None]:
    """The CPUs and GPUs trials can use: the cluster's, when Ray runs (None for the GPUs: this machine's)."""
    if not ray.is_initialized():
        return float(os.cpu_count() or 1), None
    resources = ray.cluster_resources()
    return resources.get("CPU", 1.0), resources.get("GPU", 0.0)


@ray.remote
class _TrialProcess:
    """An empty trial: a Ray process of a trial's resources that imports what a trial runs."""

    def ready(self) -> float:
        import trainables.trainable  # noqa: F401 - the import is what is timed

        return time.time()


class TrialStart:
    """What Ray adds to a trial's own start here (its process's start and imports), measured under the machine's
    load now: a process of the trial's resources is started at once, and `seconds()` waits for it to be ready."""

    def __init__(self, cpus: float, gpus: float):
        self.started = time.time()
        self.process = _TrialProcess.options(num_cpus=cpus, num_gpus=gpus).remote()
        self.ready = self.process.ready.remote()

    def seconds(self, wait: float) -> float:
        """Seconds from the start to ready; when not ready in `wait` seconds, the seconds waited (at least what it
        takes: the plan then refuses a budget that holds no trial, in its own line)."""
        try:
            ready_at = ray.get(self.ready, timeout=max(1.0, wait))
        except ray.exceptions.GetTimeoutError:
            return time.time() - self.started
        finally:
            ray.kill(self.process)
        return min(max(0.0, ready_at - self.started), time.time() - self.started)  # a node's clock may differ


def ray_tune_cli(argv: list[str]) -> int:
    """Ray's own `tune` subcommands (ls, lsx, list-trials, ...), which our `tune` script passes through."""
    from ray.tune.cli.scripts import cli

    return cli.main(args=argv, prog_name="tune", standalone_mode=False) or 0

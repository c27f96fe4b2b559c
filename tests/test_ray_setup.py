"""The Ray a study starts on this machine: what its trials' processes run with (benchmarks/pace_under_ray.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import ray

from tune.search import ray_setup
from tune.storage import resolve

pytestmark = pytest.mark.slow


def test_trials_run_with_one_malloc_arena(monkeypatch, tmp_path):
    """glibc gives the thread Ray Tune trains in an arena of its own, whose heaps fault in again step after step (a
    trial's epoch took 1.16 times `tune train`'s); a person's own MALLOC_ARENA_MAX is kept."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "")  # as unset, and put back as it was after the test
    monkeypatch.delenv("MALLOC_ARENA_MAX")

    @ray.remote(num_cpus=1)
    def arenas() -> str | None:
        return os.environ.get("MALLOC_ARENA_MAX")

    ray_setup.start_ray(resolve(), None, verbose=False)
    try:
        # no idle workers started for the driver (one per CPU, there as ray.init returns): a trial cannot use them
        assert ray_workers() == [], ray_workers()
        assert ray.get(arenas.remote(), timeout=120) == "1"
        # nobody prints the workers' output: no log monitor polling their files, no autoscaler monitor
        assert not {"log_monitor.py", "monitor.py"} & ray_scripts(), ray_scripts()
    finally:
        ray.shutdown()
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    ray_setup.start_ray(resolve(), None, verbose=True)
    try:
        assert ray.get(arenas.remote(), timeout=120) == "4"
        assert "log_monitor.py" in ray_scripts()  # --verbose prints the workers' output: its log monitor runs
    finally:
        ray.shutdown()


def processes_below() -> list[list[str]]:
    """The command lines of every process under this one (Ray's GCS, raylet, monitors, agents, workers ...)."""
    children: dict[str, list[str]] = {}
    argv: dict[str, list[str]] = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit():
                children.setdefault((proc / "stat").read_text().rpartition(")")[2].split()[1], []).append(proc.name)
                argv[proc.name] = (proc / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
    below, todo = [], [str(os.getpid())]
    while todo:
        kids = children.get(todo.pop(), [])
        below += kids
        todo += kids
    return [argv[p] for p in below]


def ray_workers() -> list[str]:
    """The titles of the Ray workers under this process (ray::IDLE, ray::arenas ...; not Ray's agents)."""
    return [a[0] for a in processes_below() if a[0].startswith("ray::") and not a[0].endswith("Agent")]


def ray_scripts() -> set[str]:
    """The names of the Python scripts the processes under this one run (Ray's monitors, dashboard ...)."""
    return {Path(a).name for argv in processes_below() for a in argv if a.endswith(".py")}

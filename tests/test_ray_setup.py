"""The Ray a study starts on this machine: what its trials' processes run with (benchmarks/pace_under_ray.py)."""
from __future__ import annotations

import os

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
        assert ray.get(arenas.remote(), timeout=120) == "1"
    finally:
        ray.shutdown()
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    ray_setup.start_ray(resolve(), None, verbose=False)
    try:
        assert ray.get(arenas.remote(), timeout=120) == "4"
    finally:
        ray.shutdown()

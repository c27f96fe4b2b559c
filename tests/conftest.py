"""Shared fixtures: real data sets on disk (the synthetic demo, real faces from ../shared) and a shrunk study."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def _snapshot(folders: list[Path]) -> dict[str, tuple[int, int]]:
    return {str(f): (f.stat().st_size, f.stat().st_mtime_ns) for folder in folders if folder.is_dir()
            for f in sorted(folder.rglob("*")) if f.is_file()}


BUDGET_FILE = "test_budget.py"  # make test's second step runs this file alone: collecting only it takes 2 s, not 14


def pytest_collection_modifyitems(config, items):
    """A study timed by a budget lives in tests/test_budget.py: one marked `budget` anywhere else would be left
    out by both of make test's steps."""
    elsewhere = [item.nodeid for item in items if item.get_closest_marker("budget") and item.path.name != BUDGET_FILE]
    if elsewhere:
        raise pytest.UsageError(f"tests marked budget belong in tests/{BUDGET_FILE}: {', '.join(elsewhere)}")


@pytest.fixture(scope="session", autouse=True)
def checkout_untouched(tmp_path_factory):
    """Tests run in a temporary folder and never write into the checkout's store or exports (checked at the end)."""
    folders = [ROOT / "mlruns", ROOT / "exports"]
    before = _snapshot(folders)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # nor into a store the user's environment points at
    os.chdir(tmp_path_factory.mktemp("cwd"))  # the default store (mlruns/) and exports/ resolve here
    yield
    os.chdir(ROOT)
    after = _snapshot(folders)
    changed = sorted(set(before.items()) ^ set(after.items()))
    assert not changed, f"the tests changed the checkout's mlruns/ or exports/: {changed[:5]}"


@pytest.fixture(autouse=True)
def ray_stopped():
    """A command stops the Ray it started, whichever way it ends: a Ray left running would take the next study's
    trials into processes of another test's environment (its weights folder, its caches)."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail("the test left Ray running")


@pytest.fixture(scope="session", autouse=True)
def image_cache(tmp_path_factory) -> Path:
    """The decoded-photo cache of the whole test session, away from the user's own cache."""
    folder = tmp_path_factory.mktemp("image-cache")
    os.environ["TUNE_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small synthetic data set in the competition layout (tune data demo)."""
    from tune.demo_data import write_demo

    out = tmp_path_factory.mktemp("demo")
    write_demo(out, persons=60, seed=1, progress=False)
    return out / "train"


@pytest.fixture(scope="session")
def faces_data(tmp_path_factory, worker_id) -> Path:
    """Real faces from ../shared/data in the competition layout; skipped where ../shared is absent. Made once
    for all of the session's workers (13 CPU-s each time), in the folder they share (pytest-xdist's recipe); the
    tests only read it."""
    chips = SHARED / "data" / "utkface-chips"
    if not chips.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    if worker_id == "master":  # no workers: this session's own folder
        out = tmp_path_factory.mktemp("faces")
    else:
        out = tmp_path_factory.getbasetemp().parent / "faces"
    made = Path(f"{out}.made")
    with FileLock(f"{out}.lock"):
        if not made.is_file():  # the first worker here, or one whose making failed
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run([sys.executable, str(SHARED / "tools" / "make_utkmask.py"), "--chips", str(chips),
                            "--out", str(out), "--persons", "120", "--eval-fraction", "0.2"], check=True,
                           capture_output=True)
            made.touch()
    return out


def tiny(**sections) -> dict:
    """A trial config shrunk for tests: tiny timm model, 32 px, few epochs, CPU. Sections override it."""
    cfg = {"task": "all", "model": {"backbone": "test_resnet", "image_size": 32},
           "train": {"epochs": 2, "batch_size": 16, "device": "cpu", "num_workers": 0}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


@pytest.fixture
def tiny_config():
    return tiny

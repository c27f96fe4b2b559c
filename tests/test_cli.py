"""The command line: user mistakes end in one line and exit code 2, before anything is written."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tune.cli import main

BIN = Path(sys.executable).parent


def test_installed_tune_is_ours_and_passes_ray_commands_through():
    script = shutil.which("tune", path=str(BIN))
    assert script, "make setup installs the tune command"
    assert "tune.cli" in Path(script).read_text()
    done = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "mask/gender/age" in done.stdout
    done = subprocess.run([script, "list-experiments", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "PROJECT_PATH" in done.stdout


def test_python_dash_m_tune_works():
    done = subprocess.run([sys.executable, "-m", "tune", "run", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "--gpus-per-trial" in done.stdout


def fails(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # progress bars may come before the error
    assert lines[-1].startswith("error: ") and not any(line.startswith("Traceback") for line in lines)
    return lines[-1]


def study(tmp_path: Path, text: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return str(path)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield
    assert not (tmp_path / "mlruns").exists(), "a failed command wrote to the MLflow store"


def test_user_mistakes(capsys, tmp_path, demo_data):
    good = "model: {backbone: test_resnet, image_size: 32}\n"
    assert "study file not found" in fails(capsys, "run", "missing.yaml")
    assert "unknown key modle" in fails(capsys, "run", study(tmp_path, "modle: {}\n"), "--data", str(demo_data))
    assert "YAML syntax error" in fails(capsys, "run", study(tmp_path, "a: [\n"))
    assert "low < high" in fails(capsys, "run", study(tmp_path, good + "space: {optimizer.lr: {uniform: [1, 0.1]}}\n"),
                                 "--data", str(demo_data))
    assert "unknown timm backbone" in fails(capsys, "run", study(tmp_path, "model: {backbone: nonet}\n"),
                                            "--data", str(demo_data))
    assert "data folder not found" in fails(capsys, "run", study(tmp_path, good), "--data", str(tmp_path / "none"))
    assert "no data folder" in fails(capsys, "run", study(tmp_path, good))
    assert "CUDA GPU" in fails(capsys, "run", study(tmp_path, good), "--data", str(demo_data), "--gpus-per-trial", "1")
    assert "--set takes KEY=VALUE" in fails(capsys, "run", study(tmp_path, good), "--set", "train.epochs")
    assert "unknown key train.epoch" in fails(capsys, "run", study(tmp_path, good), "--data", str(demo_data),
                                              "--set", "train.epoch=2")
    assert "no study named" in fails(capsys, "export", "nothing")
    assert "no interrupted study" in fails(capsys, "run", study(tmp_path, good), "--data", str(demo_data), "--resume")


def test_corrupted_image_is_caught_before_the_study(capsys, tmp_path, demo_data):
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    bad = next((data / "images").iterdir()) / "mask3.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    err = fails(capsys, "run", study(tmp_path, "model: {backbone: test_resnet}\n"), "--data", str(data))
    assert str(bad) in err


def test_data_demo_and_check(capsys, tmp_path):
    assert main(["data", "demo", str(tmp_path / "d"), "--persons", "12"]) == 0
    assert main(["data", "check", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "12 persons, 84 images" in out and "not_wear/female" in out and "0 problem(s)" in out
    os.remove(next((tmp_path / "d" / "train" / "images").iterdir()) / "normal.jpg")
    assert main(["data", "check", str(tmp_path / "d")]) == 2
    assert "missing image(s) normal" in capsys.readouterr().out
    assert "exists" in fails(capsys, "data", "demo", str(tmp_path / "d"))

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
    """Run the command; it must exit with 2 and write exactly one line, the error, to stderr."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def study(tmp_path: Path, text: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return str(path)


GOOD = "model: {backbone: test_resnet, image_size: 32}\nspace: {optimizer.lr: {loguniform: [1.0e-3, 1.0e-2]}}\n"
HEADER = "id,gender,race,age,path"


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield
    assert not (tmp_path / "mlruns").exists(), "a failed command wrote to the MLflow store"


def test_user_mistakes(capsys, tmp_path, demo_data):
    good = GOOD
    assert "study file not found" in fails(capsys, "run", "missing.yaml")
    assert "unknown key modle" in fails(capsys, "run", study(tmp_path, "modle: {}\n"), "--data", str(demo_data))
    assert "YAML syntax error" in fails(capsys, "run", study(tmp_path, "a: [\n"))
    reversed_range = good.replace("loguniform: [1.0e-3, 1.0e-2]", "uniform: [1, 0.1]")
    assert "low < high" in fails(capsys, "run", study(tmp_path, reversed_range), "--data", str(demo_data))
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


def test_weights_that_cannot_be_had_or_do_not_fit_are_one_line_before_the_study(capsys, tmp_path, demo_data,
                                                                                 monkeypatch):
    from huggingface_hub import constants
    from safetensors.torch import save_file
    from timm import create_model

    from trainables import weights

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as on this machine: no hub
    monkeypatch.setattr(weights, "LOCAL", {})  # and no package of weights installed
    space = "space: {optimizer.lr: {loguniform: [1.0e-3, 1.0e-2]}}\n"
    text = "model: {backbone: efficientnet_lite0, pretrained: true}\n" + space
    assert "no ImageNet weights for efficientnet_lite0" in fails(capsys, "run", study(tmp_path, text), "--data",
                                                                 str(demo_data))
    (tmp_path / "notes.pth").write_text("not weights")
    text = "model: {backbone: test_resnet, pretrained_file: notes.pth}\n" + space
    assert "notes.pth is not a weights file" in fails(capsys, "run", study(tmp_path, text), "--data", str(demo_data))
    save_file(create_model("test_vit").state_dict(), str(tmp_path / "vit.safetensors"))
    text = "model: {backbone: test_resnet, pretrained_file: vit.safetensors}\n" + space
    assert "no tensor conv1.0.weight of timm's test_resnet" in fails(capsys, "run", study(tmp_path, text), "--data",
                                                                     str(demo_data))
    assert "no tensor conv1.0.weight" in fails(capsys, "train", study(tmp_path, text), "--data", str(demo_data))


def test_corrupted_image_is_caught_before_the_study(capsys, tmp_path, demo_data):
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    bad = next((data / "images").iterdir()) / "mask3.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    err = fails(capsys, "run", study(tmp_path, GOOD), "--data", str(data))
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


def _field(row: str, column: int, value: str) -> str:
    cells = row.split(",")
    cells[column] = value
    return ",".join(cells)


# train.csv made from the demo's rows (each row's person has all seven photos): the case, and what the error says
CSV_CASES = {
    "empty file": (lambda rows: "", "not a readable CSV"),
    "header only": (lambda rows: HEADER + "\n", "no persons"),
    "missing column": (lambda rows: "\n".join(",".join(c for i, c in enumerate(r.split(",")) if i != 3)
                                             for r in [HEADER, *rows]), "missing column(s) age"),
    "gender not a word the loader knows": (lambda rows: "\n".join([HEADER, rows[0], _field(rows[1], 1, "M")]),
                                           "line 3: gender must be male or female, got 'M'"),
    "age not a number": (lambda rows: "\n".join([HEADER, rows[0], _field(rows[1], 3, "forty")]),
                         "line 3: age must be a number, got 'forty'"),
    "negative age": (lambda rows: "\n".join([HEADER, rows[0], _field(rows[1], 3, "-4")]),
                     "line 3: age must be between 0 and 130 years, got -4"),
    "the same person twice": (lambda rows: "\n".join([HEADER, rows[0], _field(rows[1], 0, rows[0].split(",")[0])]),
                              "line 3: id '{id0}' is also on line 2"),
    "two rows on one folder": (lambda rows: "\n".join([HEADER, rows[0], _field(rows[1], 4, rows[0].split(",")[4])]),
                               "line 3: path '{path0}' is also on line 2"),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_bad_train_csv_is_one_line_naming_file_and_row(case, capsys, tmp_path, demo_data):
    rows = (demo_data / "train.csv").read_text().splitlines()[1:3]
    data = tmp_path / "data"
    data.mkdir()
    (data / "images").symlink_to(demo_data / "images")
    make, expected = CSV_CASES[case]
    (data / "train.csv").write_text(make(rows))
    err = fails(capsys, "run", study(tmp_path, GOOD), "--data", str(data))
    first = rows[0].split(",")
    assert str(data / "train.csv") in err and expected.format(id0=first[0], path0=first[4]) in err, err


def test_a_file_that_is_not_an_image_is_named(capsys, tmp_path, demo_data):
    rows = (demo_data / "train.csv").read_text().splitlines()[1:4]
    data = tmp_path / "data"
    for row in rows:
        shutil.copytree(demo_data / "images" / row.split(",")[4], data / "images" / row.split(",")[4])
    (data / "train.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    folder = rows[0].split(",")[4]
    (data / "images" / folder / "mask3.jpg").write_text("a text file named like a photo\n")
    err = fails(capsys, "run", study(tmp_path, GOOD), "--data", str(data))
    assert f"cannot read image {data / 'images' / folder / 'mask3.jpg'}" in err


def test_photos_far_smaller_than_the_model_input_are_named_and_one_that_cannot_be_a_face_is_refused(
        capsys, tmp_path, demo_data):
    from PIL import Image

    rows = (demo_data / "train.csv").read_text().splitlines()[1:4]
    data = tmp_path / "data"
    for row in rows:
        shutil.copytree(demo_data / "images" / row.split(",")[4], data / "images" / row.split(",")[4])
    (data / "train.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    small = data / "images" / rows[0].split(",")[4] / "mask2.jpg"
    Image.new("RGB", (40, 50)).save(small)
    assert main(["data", "check", str(data)]) == 0
    out = capsys.readouterr().out
    assert f"warning: 1 photo(s) are far smaller than a model input of 224 px (a side under half of it): {small} " \
           "(40x50)" in out and "0 problem(s)" in out
    assert main(["data", "check", str(data), "--image-size", "64"]) == 0
    assert "warning" not in capsys.readouterr().out
    Image.new("RGB", (1, 1)).save(small)
    assert main(["data", "check", str(data)]) == 2
    assert f"problem: image {small} is 1x1 pixels: too small to be a photo of a face" in capsys.readouterr().out
    err = fails(capsys, "run", study(tmp_path, GOOD), "--data", str(data))
    assert f"image {small} is 1x1 pixels" in err


def _nothing_listens() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("text, argv, expected", [
    ("", [], "s.yaml: the study file is empty"),
    ("# only a comment\n", [], "s.yaml: the study file is empty"),
    ("model: {backbone: test_resnet}\nspace:\n", [], "s.yaml: space: is empty, so there is nothing to search"),
    ("model: {backbone: test_resnet}\n", [], "s.yaml: space: is empty"),
    (GOOD + "optimizer: {lr: -0.1}\n", [], "s.yaml: optimizer.lr: Input should be greater than 0 (got -0.1)"),
    (GOOD, ["--tracking-uri", "http://127.0.0.1:{port}"], "tracking server http://127.0.0.1:{port} does not answer"),
    (GOOD, ["--address", "127.0.0.1:{port}"], "--address 127.0.0.1:{port}: nothing answers there"),
    (GOOD, ["--address", "head-node"], "--address head-node: expected HOST:PORT"),
], ids=["empty file", "only a comment", "empty space", "no space", "negative lr", "tracking server down",
        "nothing at --address", "--address without a port"])
def test_bad_study_or_environment_is_one_line(text, argv, expected, capsys, tmp_path, demo_data):
    port = _nothing_listens()
    argv = [a.format(port=port) for a in argv]
    err = fails(capsys, "run", study(tmp_path, text), "--data", str(demo_data), *argv)
    assert expected.format(port=port) in err, err

"""Pretrained weights offline: the registry's EfficientNet-Lite files renamed into timm's layout, checked, recorded,
and a study that fine-tunes from them with no network, whose export no longer needs them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from trainables import weights
from trainables.config import ModelConfig, UserError
from trainables.models import build_model, check_backbone

GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
MILITARY_UNIFORM = 652  # ImageNet's class of what Grace Hopper wears in the photo


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No hub (as on this machine, and on a cluster without internet), converted weights in a folder of the test's."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    weights.hub_answers.cache_clear()
    monkeypatch.setenv("TUNE_WEIGHTS_DIR", str(tmp_path / "weights"))
    yield
    weights.hub_answers.cache_clear()


def source_file(backbone: str) -> Path:
    _, module, finder = weights.LOCAL[backbone]
    return Path(getattr(__import__(module), finder).get_model_file_path())


@pytest.mark.parametrize("backbone", list(weights.LOCAL))
def test_the_registrys_weights_renamed_into_timm_classify_a_known_photo(backbone):
    cfg = weights.with_weights(ModelConfig(backbone=backbone, pretrained=True), download=True)
    assert Path(cfg.pretrained_file).parent == weights.cache_root() and len(cfg.pretrained_sha256) == 64
    model = build_model(cfg, num_classes=1000).eval()  # the ImageNet head kept: the file's own classifier
    size = model.pretrained_cfg["input_size"][-1]
    mean, std = (torch.tensor(model.pretrained_cfg[k]).view(3, 1, 1) for k in ("mean", "std"))
    photo = Image.open(GRACE_HOPPER).convert("RGB").resize((size, size), Image.BICUBIC)
    x = (torch.from_numpy(np.array(photo)).permute(2, 0, 1).float() / 255 - mean) / std
    with torch.no_grad():
        top3 = model(x[None])[0].topk(3).indices.tolist()
    assert MILITARY_UNIFORM in top3, top3  # random or mis-mapped weights: not there


def test_a_model_for_the_task_keeps_the_backbone_and_starts_a_new_head():
    cfg = weights.with_weights(ModelConfig(backbone="efficientnet_lite0", pretrained=True))
    model = build_model(cfg, num_classes=18)
    state = weights.load_state(Path(cfg.pretrained_file))
    own = model.state_dict()
    assert model.get_classifier().out_features == 18
    body = [k for k in own if not k.startswith("classifier") and not k.endswith("num_batches_tracked")]
    assert len(body) == 245 and all(torch.equal(own[k], state[k]) for k in body)


def test_weights_of_another_size_or_architecture_or_none_at_all_are_refused_in_one_line(tmp_path):
    lite1 = weights.load_state(source_file("efficientnet_lite1"))
    with pytest.raises(UserError, match=r"timm's efficientnet_lite0 .*\(weights of another size\)|no place"):
        weights.convert_efficientnet_pytorch(lite1, "efficientnet_lite0", source_file("efficientnet_lite1"))
    resnet = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(resnet))
    with pytest.raises(UserError, match=r"resnet.safetensors: no tensor conv_stem.weight of timm's efficientnet_lite0"):
        check_backbone(ModelConfig(backbone="efficientnet_lite0", pretrained_file=str(resnet)))
    lite2 = tmp_path / "lite2.safetensors"
    shutil.copy(weights.local_file("efficientnet_lite2").file, lite2)
    with pytest.raises(UserError, match=r"lite2.safetensors: tensor \S+ is \[.*lite0 needs .*another size"):
        check_backbone(ModelConfig(backbone="efficientnet_lite0", pretrained_file=str(lite2)))
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(UserError, match=r"notes.pth is not a weights file"):
        check_backbone(ModelConfig(backbone="efficientnet_lite0", pretrained_file=str(text)))
    with pytest.raises(UserError, match=r"efficientnet_lite0 \(not its EfficientNet-PyTorch weights\)"):
        weights.convert_efficientnet_pytorch({"conv1.weight": torch.zeros(1)}, "efficientnet_lite0", text)


def test_without_the_package_a_converted_file_carried_into_the_cache_serves(monkeypatch):
    package = weights.LOCAL["efficientnet_lite0"]
    converted = weights.local_file("efficientnet_lite0").file  # converted here, with the package
    monkeypatch.setitem(weights.LOCAL, "efficientnet_lite0", (package[0], "not_installed_here", package[2]))
    assert weights.local_file("efficientnet_lite0").file == converted  # as on a GPU machine the file was carried to
    converted.unlink()
    with pytest.raises(UserError, match="no ImageNet weights for efficientnet_lite0"):
        weights.resolve(ModelConfig(backbone="efficientnet_lite0", pretrained=True))


def test_pretrained_without_hub_or_package_names_what_is_missing_and_a_changed_file_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"no ImageNet weights for resnet18 .*efficientnet_lite0, .*tune-search\["
                                        r"weights\].*pretrained_file"):
        check_backbone(ModelConfig(backbone="resnet18", pretrained=True), download=True)
    cfg = weights.with_weights(ModelConfig(backbone="efficientnet_lite0", pretrained=True))
    changed = tmp_path / "changed.safetensors"
    state = weights.load_state(Path(cfg.pretrained_file))
    save_file({**state, "bn1.bias": state["bn1.bias"] + 1}, str(changed))
    with pytest.raises(UserError, match=r"changed.safetensors is not the file this config was trained from"):
        build_model(cfg.model_copy(update={"pretrained_file": str(changed)}), 18)


@pytest.mark.slow
def test_a_pretrained_study_offline_trains_exports_and_its_export_predicts_without_the_file(demo_data, tmp_path):
    from mlflow import MlflowClient

    from tests.test_study import here

    path = tmp_path / "pre.yaml"
    path.write_text("""
task: all
model: {backbone: efficientnet_lite0, pretrained: true, image_size: 32}
train: {epochs: 1, batch_size: 32, num_workers: 0}
space: {optimizer.lr: {loguniform: [1.0e-4, 1.0e-3]}}
search: {algorithm: random, num_samples: 1}  # one trial proves it: one trial process
scheduler: {name: fifo}
""")
    here(tmp_path, "run", str(path), "--data", str(demo_data))
    here(tmp_path, "export", "pre")
    export = tmp_path / "exports" / "pre"
    config = (export / "config.yaml").read_text()
    [converted] = weights.cache_root().glob("efficientnet_lite0-*.safetensors")
    model = yaml.safe_load(config)["model"]
    assert (model["pretrained_file"], model["pretrained_sha256"]) == (str(converted), weights.sha256(converted)), model
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    trial_id = json.loads((export / "metrics.json").read_text())["ray_trial_id"]
    [run] = client.search_runs([client.get_experiment_by_name("pre").experiment_id],
                               f"tags.`ray.trial_id` = '{trial_id}'")
    assert run.data.params["model.pretrained_sha256"] == weights.sha256(converted)

    converted.unlink()  # the export holds its own weights
    photos = sorted((demo_data / "images").glob("*/mask1.*"))[:4]
    (tmp_path / "eval" / "images").mkdir(parents=True)
    for photo in photos:
        shutil.copy(photo, tmp_path / "eval" / "images" / f"{photo.parent.name}{photo.suffix}")
    pd.DataFrame({"ImageID": [f"{p.parent.name}{p.suffix}" for p in photos], "ans": 0}).to_csv(
        tmp_path / "eval" / "info.csv", index=False)
    here(tmp_path, "predict", "--model", str(export), "--data", str(tmp_path / "eval"), "--out", "sub.csv")
    assert len(pd.read_csv(tmp_path / "sub.csv")) == 4

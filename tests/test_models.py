import pytest
import timm
import torch
from safetensors.torch import save_file

from trainables.config import ModelConfig, UserError
from trainables.models import build_model, normalization


def test_local_weights_file_is_loaded_with_a_new_classifier(tmp_path):
    source = timm.create_model("test_resnet", num_classes=1000)
    weights = tmp_path / "test_resnet.safetensors"
    save_file(source.state_dict(), str(weights))
    model = build_model(ModelConfig(backbone="test_resnet", pretrained_file=str(weights)), num_classes=18)
    own, theirs = model.state_dict(), source.state_dict()
    body = [k for k in own if not k.startswith(model.default_cfg["classifier"])]
    assert body and all(torch.equal(own[k], theirs[k]) for k in body)
    assert model.get_classifier().out_features == 18


def test_random_init_follows_the_seed_and_normalization_comes_from_timm():
    def weights(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)  # as Trial seeds it with train.seed
        return list(build_model(ModelConfig(backbone="test_resnet"), num_classes=3).state_dict().values())

    first, again, other = weights(0), weights(0), weights(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # the same seed: the same model
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True) if a.is_floating_point())
    model = build_model(ModelConfig(backbone="test_resnet"), num_classes=3)
    mean, std = normalization(model)
    assert mean.shape == (3,) and torch.allclose(mean, torch.tensor(model.pretrained_cfg["mean"]))


def test_missing_weights_file_and_unknown_backbone(tmp_path):
    with pytest.raises(UserError, match="pretrained_file not found"):
        build_model(ModelConfig(backbone="test_resnet", pretrained_file=str(tmp_path / "none.pth")), 3)
    with pytest.raises(UserError, match="unknown timm backbone 'resnet_18'.*similar: .*resnet18"):
        build_model(ModelConfig(backbone="resnet_18"), 3)

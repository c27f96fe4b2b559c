"""On a CUDA GPU (skipped without one; `pytest -m gpu`, run by benchmarks/gpu_check.sh): a trial trains in bf16
with channels_last, four trials share one GPU at 0.25 each, and `tune predict` runs there. Not yet run on a GPU:
none has been lent to this project so far."""
from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch

from tests.test_study import env, runs_of, tune_cmd
from trainables.config import TrialConfig
from trainables.trial import Trial

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_trial_on_the_gpu_trains_in_bf16_with_channels_last(demo_data, tiny_config):
    cfg = tiny_config(data={"root": str(demo_data)}, model={"channels_last": True},
                      train={"device": "cuda", "epochs": 1, "num_workers": 0})
    trial = Trial(TrialConfig.model_validate(cfg))
    seen = {}

    def first_conv(module, inputs, output):
        seen.setdefault("input_channels_last", inputs[0].is_contiguous(memory_format=torch.channels_last))
        seen.setdefault("dtype", output.dtype)

    conv = next(m for m in trial.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(first_conv)
    result = trial.run_epoch()
    assert next(trial.model.parameters()).is_cuda
    assert seen == {"input_channels_last": True, "dtype": torch.bfloat16}
    assert math.isfinite(result["train_loss"]) and result["gpu_memory_peak_mb"] > 0


def test_four_trials_share_one_gpu(demo_data, tmp_path):
    path = tmp_path / "share.yaml"
    path.write_text("""
task: all
model: {backbone: resnet18, image_size: 64}
train: {epochs: 3, batch_size: 32, num_workers: 1}
space: {optimizer.lr: {loguniform: [1.0e-3, 1.0e-2]}}
search: {algorithm: random, num_samples: 4, max_concurrent: 4}
scheduler: {name: fifo}
resources: {cpus_per_trial: 2, gpus_per_trial: 0.25}
""")
    done = subprocess.run(tune_cmd("run", str(path), "--data", str(demo_data)), cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _, _, children = runs_of(tmp_path, "share")
    assert len(children) == 4 and {c.data.tags["tune.outcome"] for c in children} == {"finished"}
    spans, total_mb = [], torch.cuda.get_device_properties(0).total_memory / 2**20
    for results in (tmp_path / "mlruns" / "ray" / "share").glob("*/result.json"):
        lines = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        spans.append((lines[0]["timestamp"] - lines[0]["time_this_iter_s"], lines[-1]["timestamp"]))
        assert max(r["gpu_memory_peak_mb"] for r in lines) <= 0.25 * total_mb  # each kept to its quarter
    assert len(spans) == 4 and max(s for s, _ in spans) < min(e for _, e in spans)  # all four ran at once


def test_predict_on_the_gpu_agrees_with_the_cpu(demo_data, tmp_path):
    from tune.cli import main

    path = tmp_path / "gpu.yaml"
    path.write_text("task: all\nmodel: {backbone: test_resnet, image_size: 32}\n"
                    "train: {epochs: 1, batch_size: 16, num_workers: 0, device: cuda}\n")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["train", str(path), "--data", str(demo_data), "--out", str(tmp_path / "model"),
                 "--tracking-uri", store]) == 0
    eval_dir = tmp_path / "eval"
    (eval_dir / "images").mkdir(parents=True)
    photos = sorted((demo_data / "images").glob("*/mask1.jpg"))[:20]
    for i, photo in enumerate(photos):
        (eval_dir / "images" / f"{i}.jpg").write_bytes(photo.read_bytes())
    (eval_dir / "info.csv").write_text("ImageID,ans\n" + "".join(f"{i}.jpg,0\n" for i in range(len(photos))))
    for device in ("cuda", "cpu"):
        assert main(["predict", "--model", str(tmp_path / "model"), "--data", str(eval_dir), "--device", device,
                     "--out", str(tmp_path / f"{device}.csv"), "--tracking-uri", store]) == 0
    on_gpu, on_cpu = ((tmp_path / f"{d}.csv").read_text().splitlines() for d in ("cuda", "cpu"))
    assert len(on_gpu) == 21 and sum(a == b for a, b in zip(on_gpu, on_cpu, strict=True)) >= 19  # bf16 vs fp32

"""What `model.frozen_layers` saves on the CPU: a training step with the backbone's first N layer groups frozen.

For each model and size, on 1 and on every CPU thread: the median time of a training step (forward, backward,
AdamW, channels_last as a trial runs it) of a batch of 64, for each N, the settings taking turns step by step so
that a machine's drift hits them alike. The models are built as a trial builds them (`trainables.models.
build_model`: timm's freeze, batch norms made FrozenBatchNorm2d), from random weights: the time does not depend
on them, nor on the pixels. What it does to a model's F1 and to a study's plan is measured with
benchmarks/search_quality.py (docs/benchmarks.md, "Frozen early layers").

    .venv/bin/python benchmarks/frozen_layers.py                                  # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/frozen_layers.py --models efficientnet_lite0@176 --frozen 0 4

Writes benchmarks/results/frozen-layers-<device>.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.channels_last import write_rows  # noqa: E402
from trainables.config import ModelConfig  # noqa: E402
from trainables.models import build_model, layer_groups  # noqa: E402

MODELS = ["efficientnet_lite0@128", "efficientnet_lite0@176"]


def measure(spec: str, frozen: list[int], threads: int, steps: int, batch: int = 64) -> dict:
    name, size = spec.split("@")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, int(size), int(size)).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 18, (batch,))
    runs = {}
    for n in frozen:
        model = build_model(ModelConfig(backbone=name, image_size=int(size), frozen_layers=n), 18)
        model = model.to(memory_format=torch.channels_last).train()
        runs[n] = (model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3))
    times = {n: [] for n in frozen}
    for step in range(steps + 2):  # the first two of each: warm-up, not counted
        for n, (model, optimizer) in runs.items():
            started = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step >= 2:
                times[n].append(time.perf_counter() - started)
    groups = len(layer_groups(runs[frozen[0]][0], ModelConfig(backbone=name)))
    row = {"model": spec, "threads": threads, "batch": batch, "layer_groups": groups}
    for n in frozen:
        row[f"train_step_s_frozen_{n}"] = round(statistics.median(times[n]), 4)
        row[f"ratio_frozen_{n}"] = round(row[f"train_step_s_frozen_{n}"] / row[f"train_step_s_frozen_{frozen[0]}"], 3)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=MODELS, help="timm model@size (default: %(default)s)")
    p.add_argument("--frozen", nargs="+", type=int, default=[0, 2, 3, 4, 5], help="values of model.frozen_layers "
                   "(the first is the one the others are compared with; default: %(default)s)")
    p.add_argument("--steps", type=int, default=6, help="timed steps of each setting (after 2 of warm-up)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    cpus = os.cpu_count() or 1
    rows = []
    print(f"{'model':<24}{'threads':>8}" + "".join(f"{f'frozen {n}':>11}{'ratio':>7}" for n in args.frozen))
    for spec in args.models:
        for threads in sorted({1, cpus}):
            r = measure(spec, args.frozen, threads, args.steps)
            rows.append(r)
            print(f"{spec:<24}{threads:>8}" + "".join(f"{r[f'train_step_s_frozen_{n}']:>11.3f}"
                                                    f"{r[f'ratio_frozen_{n}']:>7.2f}" for n in args.frozen), flush=True)
    print(f"wrote {write_rows(Path(args.out), 'frozen-layers', rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

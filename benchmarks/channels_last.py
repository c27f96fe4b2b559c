"""The memory format of a trial on the CPU: a training step and a validation batch in NCHW against channels_last.

For each model and size, on 1 and on every CPU thread: the median time of a training step (forward, backward,
AdamW) of a batch of 64 and of a validation batch (forward, no grad), the two formats taking turns step by step
so that a machine's drift hits both alike. Random inputs: the time does not depend on the pixels. What a whole
`tune train` command gains is measured with farm-bench (docs/benchmarks.md, "channels_last on the CPU").

    .venv/bin/python benchmarks/channels_last.py                                  # about 4 minutes on 2 cores
    .venv/bin/python benchmarks/channels_last.py --models efficientnet_lite0@112 --steps 8

Writes benchmarks/results/channels-last-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import timm  # noqa: E402
import torch  # noqa: E402

from benchmarks.search_quality import device_name  # noqa: E402

MODELS = ["efficientnet_lite0@112", "efficientnet_lite0@176", "efficientnet_lite1@112", "resnet18@64"]
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def measure(spec: str, threads: int, steps: int, batch: int = 64) -> dict:
    name, size = spec.split("@")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, int(size), int(size))
    y = torch.randint(0, 18, (batch,))
    runs = {}
    for fmt, memory_format in FORMATS.items():
        model = timm.create_model(name, num_classes=18).to(memory_format=memory_format)
        runs[fmt] = (model, torch.optim.AdamW(model.parameters(), 1e-3), x.contiguous(memory_format=memory_format))
    train = {fmt: [] for fmt in FORMATS}
    val = {fmt: [] for fmt in FORMATS}
    for step in range(steps + 2):  # the first two of each: warm-up, not counted
        for fmt, (model, optimizer, inputs) in runs.items():
            model.train()
            started = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(inputs), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            took = time.perf_counter() - started
            model.eval()
            started = time.perf_counter()
            with torch.no_grad():
                model(inputs)
            if step >= 2:
                train[fmt].append(took)
                val[fmt].append(time.perf_counter() - started)
    row = {"model": spec, "threads": threads, "batch": batch}
    for fmt in FORMATS:
        row[f"train_step_s_{fmt}"] = round(statistics.median(train[fmt]), 4)
        row[f"val_batch_s_{fmt}"] = round(statistics.median(val[fmt]), 4)
    row["train_ratio"] = round(row["train_step_s_channels_last"] / row["train_step_s_nchw"], 3)
    row["val_ratio"] = round(row["val_batch_s_channels_last"] / row["val_batch_s_nchw"], 3)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=MODELS, help="timm model@size (default: %(default)s)")
    p.add_argument("--steps", type=int, default=6, help="timed steps of each format (after 2 of warm-up)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    cpus = os.cpu_count() or 1
    rows = []
    print(f"{'model':<24}{'threads':>8}{'train NCHW':>12}{'train CL':>10}{'ratio':>7}{'val NCHW':>10}{'val CL':>8}"
          f"{'ratio':>7}")
    for spec in args.models:
        for threads in sorted({1, cpus}):
            r = measure(spec, threads, args.steps)
            rows.append(r)
            print(f"{spec:<24}{threads:>8}{r['train_step_s_nchw']:>12.3f}{r['train_step_s_channels_last']:>10.3f}"
                  f"{r['train_ratio']:>7.2f}{r['val_batch_s_nchw']:>10.3f}{r['val_batch_s_channels_last']:>8.3f}"
                  f"{r['val_ratio']:>7.2f}", flush=True)
    print(f"wrote {write_rows(Path(args.out), 'channels-last', rows)}")
    return 0


def write_rows(folder: Path, name: str, rows: list[dict]) -> Path:
    """A step-timing benchmark's rows as `folder/NAME-<device>.json`, with the machine, torch, commit and date."""
    device = device_name()
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    out = folder / f"{name}-{device}.json"
    out.write_text(json.dumps({"device": device, "machine": platform.processor() or platform.machine(),
                               "torch": torch.__version__, "commit": commit,
                               "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "rows": rows}, indent=1) + "\n")
    return out


if __name__ == "__main__":
    sys.exit(main())

"""What each training technique does to a CPU model on the real faces of ../shared, at a fixed number of epochs.

    .venv/bin/python benchmarks/techniques.py                         (about an hour on 2 cores)
    .venv/bin/python benchmarks/techniques.py --epochs 4 --persons 0  (every person: hours)

The set-up is `search_spaces/cpu.yaml`'s fixed values (efficientnet_lite0 with ImageNet weights at 112 px on the
face's crop, the balanced sampler, light augmentation, cosine with warm-up, AdamW 2e-3, the mean of the last 3
epochs where it validates better) trained by `tune train --epochs N --cpus C` on the first --persons persons of
make_utkmask.py's training set, then scored by `tune evaluate` on the validation persons of its split. Each
technique changes the baseline alone, with --seeds seeds each. Writes
benchmarks/results/techniques-pretrained-<device>.json (techniques-<device>.json: the earlier results, from
random weights): per technique, each seed's 18-class macro F1, the mean, its gain over the baseline's mean, and
the mean epoch time; with --only, the rows of earlier runs not run again stay in the file ("earlier"), each
run's beside its own baseline. --times-only then times one epoch of each technique, one after
the other on an otherwise idle machine, into the same file (the epochs of the F1 runs share the machine with
whatever else runs):

    .venv/bin/python benchmarks/techniques.py --times-only             (about 5 minutes)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_quality import TUNE, device_name, real_faces, run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TECHNIQUES = {
    "baseline": [],
    "decay_norm_and_bias": ["optimizer.decay_norm_and_bias=true"],  # the old way: every weight decayed
    "mixup": ["augment.mixup=0.2"],
    "cutmix": ["augment.cutmix=1.0"],
    "shuffle_sampler": ["data.sampler=shuffle"],  # the balanced sampler is the baseline's
    "ema": ["train.ema=0.999"],
    "layer_decay": ["optimizer.layer_decay=0.75"],  # fine-tuning: the stem learns at a few percent of the head's lr
    "head_warmup": ["train.head_warmup=0.5"],  # fine-tuning: the new head alone for the first half epoch
    "lower_lr": ["optimizer.lr=3.0e-4"],  # the runs of 2026-12-06, against a baseline at 1e-3
    "lr_1e-3": ["optimizer.lr=1.0e-3"],  # the baseline's lr until 2026-12-07 (higher_lr: 2e-3 against it, +0.060)
    "lr_4e-3": ["optimizer.lr=4.0e-3"],
    "label_smoothing": ["loss.label_smoothing=0.1"],  # the space searches 0-0.15; the prior has none
    "no_average_last": ["train.average_last=null"],  # the baseline keeps the mean of its last 3 epochs where better
    # what a larger budget buys at about the same cost an epoch (x1.3): a larger backbone, or larger photos
    "lite1": ["model.backbone=efficientnet_lite1"],
    "size_128": ["model.image_size=128"],
    # a 3-epoch fine-tune's learning rate: higher, or held for two epochs and then a tenth (a later decay)
    "step_at_2": ["schedule.name=step", "schedule.step_epochs=2", "schedule.step_gamma=0.1"],
}


def train_and_score(data: Path, sets: list[str], epochs: int, cpus: int, out: Path, log: Path, env: dict) -> dict:
    store = f"sqlite:///{out.parent / 'mlflow.db'}"
    flags = [a for s in sets for a in ("--set", s)]
    printed = run(TUNE + ["train", "search_spaces/cpu.yaml", "--data", str(data / "train"), "--epochs", str(epochs),
                          "--cpus", str(cpus), "--out", str(out), "--tracking-uri", store, *flags], log, ROOT, env)
    epoch_s = [float(s) for s in re.findall(r"^epoch \d+/\d+: .*\((\d+) s\)$", printed, re.M)]
    scored = run(TUNE + ["evaluate", "--model", str(out), "--data", str(data / "train"), "--tracking-uri", store],
                 log, ROOT, env)
    f1 = float(re.search(r"^macro F1, 18 classes\s+([0-9.]+)$", scored, re.M).group(1))
    return {"f1_18": f1, "val_f1": json.loads((out / "metrics.json").read_text())["val_f1"], "epoch_s": epoch_s}


def time_epochs(results_file: Path, data: Path, cpus: int, persons: list[str], work: Path, env: dict) -> int:
    """One epoch of each technique of the results file, one after the other: its seconds and its ratio to the
    baseline's."""
    out = json.loads(results_file.read_text())
    for name, row in out["techniques"].items():
        store, folder = f"sqlite:///{work / 'times.db'}", work / f"time-{name}"
        flags = [a for s in [*row["sets"], *persons] for a in ("--set", s)]
        printed = run(TUNE + ["train", "search_spaces/cpu.yaml", "--data", str(data / "train"), "--epochs", "1",
                              "--cpus", str(cpus), "--out", str(folder), "--tracking-uri", store, *flags],
                      work / "times.log", ROOT, env)
        row["epoch_s_alone"] = float(re.search(r"^epoch 1/1: .*\((\d+) s\)$", printed, re.M).group(1))
    base = out["techniques"]["baseline"]["epoch_s_alone"]
    for name, row in out["techniques"].items():
        row["epoch_time_ratio"] = round(row["epoch_s_alone"] / base, 2)
        print(f"{name:22s} epoch {row['epoch_s_alone']:.0f} s alone (x{row['epoch_time_ratio']})")
    out["epoch_times_commit"] = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                                               capture_output=True, text=True).stdout.strip()
    results_file.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def earlier_rows(before: dict, rerun: set[str]) -> list[dict]:
    """The results of earlier runs that were not run again, each run with its commit, date and baseline."""
    kept = list(before.get("earlier", []))
    rows = {name: row for name, row in before["techniques"].items() if name not in rerun}
    if rows:
        kept.insert(0, {"commit": before["commit"], "date": before["date"], "epochs": before["epochs"],
                        "persons": before["persons"], "techniques": {"baseline": before["techniques"]["baseline"],
                                                                      **rows}})
    return kept


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--persons", type=int, default=800, help="the first N training persons (0: all)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--cpus", type=int, default=os.cpu_count())
    p.add_argument("--only", action="append", choices=list(TECHNIQUES), help="these techniques only")
    p.add_argument("--data", default="/tmp/utkmask", help="where make_utkmask.py's data set is (made if missing)")
    p.add_argument("--work", help="working folder (default /tmp/techniques-STAMP)")
    p.add_argument("--times-only", action="store_true", help="time one epoch of each technique into the results")
    args = p.parse_args()
    data = real_faces(Path(args.data))
    work = Path(args.work or f"/tmp/techniques-{time.strftime('%Y%m%d-%H%M%S')}")
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TUNE_CACHE_DIR": str(work / "cache"), "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    persons = ["--set", f"data.max_persons={args.persons}"] if args.persons else []
    results_file = ROOT / "benchmarks" / "results" / f"techniques-pretrained-{device_name()}.json"
    if args.times_only:
        return time_epochs(results_file, data, args.cpus, persons[1::2], work, env)
    out = {"device": device_name(), "cpus": args.cpus, "machine": platform.platform(), "epochs": args.epochs,
           "persons": args.persons or "all", "set_up": "search_spaces/cpu.yaml's fixed values, tune train + tune "
           "evaluate on the split's validation persons",
           "commit": subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip(), "date": time.strftime("%Y-%m-%d"), "techniques": {}}
    for name, sets in TECHNIQUES.items():
        if args.only and name not in args.only and name != "baseline":
            continue
        runs = []
        for seed in range(args.seeds):
            started = time.monotonic()
            result = train_and_score(data, [*sets, f"train.seed={seed}", *persons[1::2]], args.epochs, args.cpus,
                                     work / f"{name}-{seed}", work / f"{name}.log", env)
            runs.append({**result, "seed": seed, "wall_s": round(time.monotonic() - started)})
            print(f"{name} seed {seed}: F1 {result['f1_18']:.4f}, epochs {result['epoch_s']} s", flush=True)
        mean = statistics.mean(r["f1_18"] for r in runs)
        out["techniques"][name] = {"sets": sets, "runs": runs, "f1_18_mean": round(mean, 4),
                                   "epoch_s_mean": round(statistics.mean(s for r in runs for s in r["epoch_s"]), 1)}
    base = out["techniques"]["baseline"]
    for name, row in out["techniques"].items():
        row["gain_f1_18"] = round(row["f1_18_mean"] - base["f1_18_mean"], 4)
        row["epoch_time_ratio"] = round(row["epoch_s_mean"] / base["epoch_s_mean"], 2)
        print(f"{name:22s} F1 {row['f1_18_mean']:.4f} ({row['gain_f1_18']:+.4f})  epoch {row['epoch_s_mean']:.0f} s "
              f"(x{row['epoch_time_ratio']})")
    if args.only and results_file.is_file():  # the rows not run again stay, each beside the baseline it was run with
        out["earlier"] = earlier_rows(json.loads(results_file.read_text()), set(out["techniques"]))
    results_file.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {results_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

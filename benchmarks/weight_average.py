"""Does an average of a trial's last epochs' weights score better than its last epoch? (issue 16's final phase)

    .venv/bin/python benchmarks/weight_average.py                  (about 7 minutes per seed on a 2-core AVX2 host)
    .venv/bin/python benchmarks/weight_average.py --seeds 0 1 --epochs 8 --persons 800

`search_spaces/cpu.yaml`'s fixed values (resnet18 from random weights, the face's crop at 64 px, the balanced
sampler, AdamW 1e-3 with a cosine schedule to its last epoch) trained as a trial trains (`trainables.Trial`) on
the first --persons persons of make_utkmask.py's training set, keeping the weights after each of the last four
epochs. Then each candidate is scored on the trial's validation persons, which none of them trained on:

- last: the last epoch's weights (what a trial exports today);
- avg2 / avg3 / avg4: the mean of the last 2, 3, 4 epochs' weights and batch-norm statistics;
- avg3+bn: the mean of the last 3, its batch-norm statistics measured again over a quarter of an epoch of
  training batches (as SWA does: an average of weights is not matched by the average of their statistics).

Writes benchmarks/results/weight-average-<device>.json: per seed each candidate's 18-class macro F1, and the
mean gain of each over `last`.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_quality import SHARED, device_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from trainables.trial import Trial  # noqa: E402
from tune.config import load_study  # noqa: E402

TAIL = 4


def mean_state(states: list[dict]) -> dict:
    """The element-wise mean of state dicts (integer buffers, batch-norm's step counts: the last one's)."""
    out = {}
    for key, last in states[-1].items():
        out[key] = (sum(s[key] for s in states) / len(states)).to(last.dtype) if last.is_floating_point() else last
    return out


@torch.no_grad()
def measure_norms(trial: Trial, batches: int) -> None:
    """Batch-norm statistics of the scored model measured again, over `batches` training batches."""
    model = trial.scored_model
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative mean over the batches
    model.train()
    for i, (images, _) in enumerate(trial.train_loader):
        if i == batches:
            break
        model(trial.dev.batch(images))
    for m in norms:
        m.momentum = 0.1


def one_seed(data: Path, seed: int, epochs: int, persons: int, cpus: int) -> dict:
    study = load_study(ROOT / "search_spaces" / "cpu.yaml")
    cfg = study.trial_defaults()
    cfg.data.root = str(data / "train")
    cfg.data.max_persons = persons or None
    cfg.train.epochs, cfg.train.seed, cfg.train.device = epochs, seed, "cpu"
    trial = Trial(cfg, cpus=cpus)
    tail, epoch_s = [], []
    while trial.epoch < epochs:
        result = trial.run_epoch()
        epoch_s.append(round(result["epoch_time_s"], 1))
        print(f"seed {seed} epoch {trial.epoch}/{epochs}: val_f1 {result['val_f1']:.4f} ({epoch_s[-1]:.0f} s)",
              flush=True)
        if trial.epoch > epochs - TAIL:
            tail.append({k: v.detach().clone() for k, v in trial.scored_model.state_dict().items()})
    last = copy.deepcopy(tail[-1])
    scores = {"last": trial.evaluate()["val_f1"]}
    for k in (2, 3, 4):
        trial.scored_model.load_state_dict(mean_state(tail[-k:]))
        scores[f"avg{k}"] = trial.evaluate()["val_f1"]
    trial.scored_model.load_state_dict(mean_state(tail[-3:]))
    started = time.perf_counter()
    measure_norms(trial, max(1, len(trial.train_loader) // 4))
    bn_s = time.perf_counter() - started
    scores["avg3+bn"] = trial.evaluate()["val_f1"]
    trial.scored_model.load_state_dict(last)
    print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()), flush=True)
    return {"seed": seed, "val_f1": scores, "epoch_s": epoch_s, "norms_measured_s": round(bn_s, 1),
            "train_persons": len(trial.train_persons), "val_persons": len(trial.val_persons)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/tmp/utkmask", help="make_utkmask.py's data set (made if missing)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--persons", type=int, default=800, help="the first N training persons (0: every one)")
    p.add_argument("--cpus", type=int, default=2)
    args = p.parse_args()
    data = Path(args.data)
    if not (data / "train" / "train.csv").exists():
        import subprocess
        subprocess.run([sys.executable, str(SHARED / "tools" / "make_utkmask.py"), "--chips",
                        str(SHARED / "data" / "utkface-chips"), "--out", str(data), "--eval-fraction", "0.2"],
                       check=True)
    runs = [one_seed(data, s, args.epochs, args.persons, args.cpus) for s in args.seeds]
    names = list(runs[0]["val_f1"])
    gain = {n: round(statistics.mean(r["val_f1"][n] - r["val_f1"]["last"] for r in runs), 4) for n in names[1:]}
    out = ROOT / "benchmarks" / "results" / f"weight-average-{device_name()}.json"
    out.write_text(json.dumps({"command": " ".join(["benchmarks/weight_average.py", *sys.argv[1:]]),
                               "machine": platform.processor() or platform.machine(), "epochs": args.epochs,
                               "persons": args.persons, "runs": runs, "mean_gain_over_last": gain}, indent=1))
    print(json.dumps(gain), "->", out)


if __name__ == "__main__":
    main()

"""Does the search beat the hand recipe at the same wall-clock budget? Both sides on the real faces of ../shared.

    .venv/bin/python benchmarks/search_quality.py --budget 20m            (about 65 minutes on 2 cores)
    .venv/bin/python benchmarks/search_quality.py --budget 40m --side service

(a) recipe: `tune train benchmarks/recipe-pretrained.yaml --time-budget` (efficientnet_lite0 with ImageNet weights
    at 112 px, Adam 1e-3 constant, the whole photo, flip only; --regime random: recipe.yaml, resnet18 from random
    weights at 96 px, the earlier results) for as many epochs as fit, then `tune predict` on the eval persons;
(b) service: `tune run SPACE --time-budget`, then `tune export --ensemble` and `tune predict --tta flip`,
    as a user turns a study into a submission;
(c) prior: the study file's fixed values trained once, `tune train SPACE --time-budget` on every CPU, then
    `tune predict --tta flip`: what the search adds to its own best guess.
Each side starts from an empty photo cache and its own MLflow store (decoding counts), and its clock runs from
its first command to its submission; both submissions are scored by `tune score` against the hidden answers.
The part of B left for exporting and predicting (--reserve) is measured on this machine, not a guess.

Writes benchmarks/results/search-quality-pretrained-<device>.json (-40m.json etc. for other budgets; a side run
alone keeps the other sides' last numbers at the same budget); --regime random: search-quality-<device>.json, the
random-weights results, with a --space of random weights
and the commands' logs under --work.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from tune.outcomes import planned_epochs

ROOT = Path(__file__).resolve().parent.parent
TUNE = [sys.executable, "-m", "tune"]
SHARED = ROOT.parent / "shared"
SCORES = {"f1_18": "macro F1, 18 classes", "f1_mask": "macro F1, mask", "f1_gender": "macro F1, gender",
          "f1_age": "macro F1, age band"}


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).replace(" ", "-")
    flags = set(re.findall(r"\S+", next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                                         if line.startswith("flags")), "") if Path("/proc/cpuinfo").is_file() else ""))
    # hosts of one kind differ: an epoch took 4-5 times as long on one with AVX2 only as on one with AVX-512
    isa = "" if "avx512f" in flags or not flags else "-avx2" if "avx2" in flags else "-noavx2"
    return f"cpu-{os.cpu_count()}cores{isa}"


def real_faces(data: Path) -> Path:
    """make_utkmask.py's data set of the real faces in ../shared at `data`, made there first if missing."""
    if not (data / "train" / "train.csv").is_file():
        subprocess.run([sys.executable, str(SHARED / "tools" / "make_utkmask.py"), "--chips", str(SHARED / "data" /
                        "utkface-chips"), "--out", str(data), "--eval-fraction", "0.2"], check=True)
    return data


class Refused(Exception):
    """A side's command refused the budget as too short (exit code 2): recorded as the side's result."""


def run(cmd: list[str], log: Path, cwd: Path, env: dict) -> str:
    """Run a command, its output appended to log; returns the output. Raises when it fails."""
    started = time.monotonic()
    out = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n{out.stdout}\n[{time.monotonic() - started:.0f} s, exit {out.returncode}]\n")
    if out.returncode == 2 and "time budget" in out.stdout:
        raise Refused(out.stdout.strip().splitlines()[-1])
    if out.returncode != 0:
        raise SystemExit(f"failed ({out.returncode}): {' '.join(cmd)}; see {log}")
    return out.stdout


def score(submission: Path, answers: Path, log: Path, cwd: Path, env: dict) -> dict:
    text = run(TUNE + ["score", str(submission), str(answers)], log, cwd, env)
    return {**{key: float(re.search(rf"^{re.escape(label)}\s+([0-9.]+)$", text, re.M).group(1))
               for key, label in SCORES.items()}, "predictions": predictions(submission, answers)}


CLASS_CHARS = "0123456789abcdefgh"  # a prediction kept in a results file: class c is CLASS_CHARS[c]


def predictions(submission: Path, answers: Path) -> str:
    """The submission's classes in the answers' order, one character each (0-9, then a-h for 10-17): kept in the
    results so that two runs can be compared person by person later (benchmarks/paired.py), their folders gone."""
    ids = pd.read_csv(answers)["ImageID"]
    return "".join(CLASS_CHARS[c] for c in pd.read_csv(submission).set_index("ImageID").loc[ids, "ans"])


RECIPES = {"pretrained": "recipe-pretrained.yaml", "random": "recipe.yaml"}  # --regime: the teams' hand recipe


def recipe(data: Path, budget: float, reserve: float, work: Path, env: dict, regime: str) -> dict:
    log, out = work / "recipe.log", work / "exports" / "recipe"
    start = time.monotonic()
    run(TUNE + ["train", str(ROOT / "benchmarks" / RECIPES[regime]), "--data", str(data / "train"), "--out", str(out),
                "--time-budget", f"{budget - reserve:.0f}s"], log, work, env)
    trained = time.monotonic() - start
    run(TUNE + ["predict", "--model", str(out), "--data", str(data / "eval"), "--out", str(work / "recipe.csv")],
        log, work, env)
    wall = time.monotonic() - start
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall_s": round(wall, 1), "train_s": round(trained, 1), "reserve_s": reserve,
            "recipe": RECIPES[regime], "epochs_trained": _epochs(log),
            "kept_epoch": metrics["epoch"], "val_f1": metrics["val_f1"],
            **score(work / "recipe.csv", data / "eval_answers.csv", log, work, env)}


def prior(data: Path, budget: float, reserve: float, space: str, work: Path, env: dict, sets: list[str]) -> dict:
    log, out = work / "prior.log", work / "exports" / "prior"
    start = time.monotonic()
    extra = [a for s in sets for a in ("--set", s)]
    text = run(TUNE + ["train", str(ROOT / space), "--data", str(data / "train"), "--out", str(out),
                       "--time-budget", f"{budget - reserve:.0f}s", *extra], log, work, env)
    trained = time.monotonic() - start
    run(TUNE + ["predict", "--model", str(out), "--data", str(data / "eval"), "--tta", "flip",
                "--out", str(work / "prior.csv")], log, work, env)
    wall = time.monotonic() - start
    metrics = json.loads((out / "metrics.json").read_text())
    plan = re.search(r"^plan: .*$", text, re.M)
    return {"wall_s": round(wall, 1), "train_s": round(trained, 1), "reserve_s": reserve, "space": space,
            "plan": plan.group(0) if plan else None, "epochs_trained": _epochs(log),
            "kept_epoch": metrics["epoch"], "val_f1": metrics["val_f1"],
            **score(work / "prior.csv", data / "eval_answers.csv", log, work, env)}


def service(data: Path, budget: float, reserve: float, space: str, work: Path, env: dict, sets: list[str]) -> dict:
    log, name = work / "service.log", "search-quality"
    start, start_wall = time.monotonic(), time.time()
    extra = [a for s in sets for a in ("--set", s)]
    run(TUNE + ["run", str(ROOT / space), "--data", str(data / "train"), "--name", name,
                "--time-budget", f"{budget - reserve:.0f}s", *extra], log, work, env)
    searched = time.monotonic() - start
    text = run(TUNE + ["export", name, "--ensemble", "--out", str(work / "exports" / "service")], log, work, env)
    run(TUNE + ["predict", "--model", str(work / "exports" / "service"), "--data", str(data / "eval"),
                "--tta", "flip", "--out", str(work / "service.csv")], log, work, env)
    wall = time.monotonic() - start
    manifest = json.loads((work / "exports" / "service" / "ensemble.json").read_text())
    plan = re.search(r"^plan: .*$", log.read_text(), re.M)
    return {"wall_s": round(wall, 1), "search_s": round(searched, 1), "reserve_s": reserve, "space": space,
            "sets": sets, "plan": plan.group(0) if plan else None,
            "anytime": anytime(work / "mlruns" / "ray" / name, start_wall),
            "where_the_search_went": where_time_went(work / "mlruns" / "ray" / name, start_wall, searched),
            "rank_by_epoch": rank_by_epoch(work / "mlruns" / "ray" / name),
            "ensemble_members": len(manifest["members"]),
            "ensemble_val_f1": manifest["val_f1"], "best_trial_val_f1": manifest["best_member_val_f1"],
            "export_line": text.strip().splitlines()[0],
            **score(work / "service.csv", data / "eval_answers.csv", log, work, env),
            "candidates_eval": candidates(name, data, work, env)}


CANDIDATES = """
import json, shutil, sys
from pathlib import Path
from trainables import data
from trainables.config import TrialConfig
from tune import storage
from tune.export import write_export
from tune.outcomes import best_checkpoints
store = storage.resolve()
for checkpoint, metrics in best_checkpoints(sys.argv[1], "val_f1", "max", store):
    checkpoint = store.local_path(checkpoint)
    config = TrialConfig.model_validate_json((checkpoint / "config.json").read_text())
    out = Path(sys.argv[2]) / metrics["ray_trial_id"]
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(checkpoint / "model.safetensors", out / "model.safetensors")
    write_export(out, config, metrics, data.split_persons(data.read_table(config.data.root, config.data.max_persons),
                                                          config.data))
"""


def candidates(name: str, data: Path, work: Path, env: dict) -> dict:
    """After the side's clock, a diagnostic never used to choose: the eval F1 of each trial the ensemble chose from
    (its best checkpoint, as `tune export --ensemble` sees it) and of all of them averaged with equal weights, each
    with --tta flip. It tells a choice that missed on the eval persons from trials that were no better there."""
    log, folder = work / "candidates.log", work / "candidates"
    run([sys.executable, "-c", CANDIDATES, name, str(folder)], log, work, env)
    found = {}
    trials = sorted(p for p in folder.iterdir() if (p / "metrics.json").is_file())
    for models, key in [([t], t.name) for t in trials] + ([(trials, "all_equal")] if len(trials) > 1 else []):
        csv = work / f"candidate-{key}.csv"
        run(TUNE + ["predict", *(a for m in models for a in ("--model", str(m))), "--data", str(data / "eval"),
                    "--tta", "flip", "--out", str(csv)], log, work, env)
        found[key] = {k: v for k, v in score(csv, data / "eval_answers.csv", log, work, env).items()
                      if k in ("f1_18", "predictions")}
        if key != "all_equal":
            metrics = json.loads((trials[[t.name for t in trials].index(key)] / "metrics.json").read_text())
            found[key] |= {"val_f1": round(metrics["val_f1"], 4), "epoch": metrics.get("epoch")}
    return found


def where_time_went(folder: Path, started: float, searched: float) -> dict:
    """Where the study's wall time went, from Ray's per-trial result files: before the first trial, and the
    trial-seconds of the trials that finished, that ASHA stopped, and that the budget cut."""
    trials = {}
    for results in folder.glob("*/result.json"):
        rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "epoch" in r and "time_total_s" in r]
        if rows:
            cut = (results.parent / "cut_by_time_budget.txt").is_file()
            params = json.loads((results.parent / "params.json").read_text())
            own = planned_epochs(rows[-1], params, 0)  # its schedule as it last re-planned it, else as it started
            trials[results.parent.name] = (rows[-1]["timestamp"] - rows[-1]["time_total_s"], rows[-1], cut, own)
    if not trials:
        return {}
    epochs = max(r["epoch"] for _, r, _, _ in trials.values())
    seconds = {"finished": 0.0, "stopped_early": 0.0, "cut": 0.0}
    counts = dict.fromkeys(seconds, 0)
    for _, last, cut, own in trials.values():
        kind = "cut" if cut else ("finished" if last["epoch"] >= (own or epochs) else "stopped_early")
        seconds[kind] += last["time_total_s"]
        counts[kind] += 1
    return {"before_first_trial_s": round(min(s for s, _, _, _ in trials.values()) - started, 1),
            "trials": counts, "trial_s": {k: round(v, 1) for k, v in seconds.items()},
            "epochs_reached_of_planned": {name.split("_")[2]: [last["epoch"], own or epochs]
                                          for name, (_, last, _, own) in trials.items()},
            "epoch_s_median": sorted(r["time_this_iter_s"] for _, r, _, _ in trials.values())[len(trials) // 2],
            "study_s": round(searched, 1)}


def anytime(folder: Path, started: float) -> list[list[float]]:
    """The best validation F1 so far against the seconds since the study's command started, from Ray's results."""
    points = sorted((r["timestamp"] - started, r["val_f1"]) for results in folder.glob("*/result.json")
                    for r in map(json.loads, filter(str.strip, results.read_text().splitlines())) if "val_f1" in r)
    curve, best = [], -1.0
    for t, value in points:
        if value > best:
            best = value
            curve.append([round(t, 1), round(value, 4)])
    return curve


def rank_by_epoch(folder: Path) -> dict:
    """For the trials whose schedule ran to its end: Spearman's rho of each epoch's validation F1 against the
    final one (how well a rung at that epoch ranks the trials), where at least three trials reached it."""
    from tune.search.rungs import rank_by_epoch as rho_by_epoch

    curves = []
    for results in folder.glob("*/result.json"):
        rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "val_f1" in r]
        if rows and rows[-1]["epoch"] >= rows[-1].get("planned_epochs", rows[-1]["epoch"]):
            curves.append({r["epoch"]: r["val_f1"] for r in rows})
    return {"finished_trials": len(curves),
            "rho_by_epoch": {str(epoch): rho for epoch, rho in rho_by_epoch(curves).items()}}


def _epochs(log: Path) -> int:
    return len(re.findall(r"^epoch \d+/", log.read_text(), re.M))


def main() -> int:
    from tune.config import parse_duration

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", default="20m", help="wall-clock budget of each side (default 20m)")
    p.add_argument("--side", choices=["all", "recipe", "service", "prior"], default="all")
    p.add_argument("--space", default="search_spaces/cpu.yaml", help="the service's study file")
    p.add_argument("--regime", choices=list(RECIPES), default="pretrained",
                   help="the recipe to beat and the results file (random: the earlier, random-weights results)")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE overrides for the service's study")
    p.add_argument("--reserve-recipe", default="60s", help="part of B kept for predicting (recipe)")
    p.add_argument("--reserve-service", default="45s", help="part of B kept for export and predict (service)")
    p.add_argument("--reserve-prior", default="45s", help="part of B kept for predicting (prior)")
    p.add_argument("--data", default="/tmp/utkmask", help="where make_utkmask.py's data set is (made if missing)")
    p.add_argument("--work", help="working folder (default /tmp/search-quality-STAMP)")
    args = p.parse_args()
    budget = parse_duration(args.budget)
    data = real_faces(Path(args.data))
    work = Path(args.work or f"/tmp/search-quality-{time.strftime('%Y%m%d-%H%M%S')}")
    suffix = "" if budget == 1200 else f"-{budget / 60:.0f}m"  # the 20-minute run is the benchmark's headline
    regime = "pretrained-" if args.regime == "pretrained" else ""
    results_file = ROOT / "benchmarks" / "results" / f"search-quality-{regime}{device_name()}{suffix}.json"
    previous = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if previous.get("budget_s") != budget:
        previous = {}
    out = {"budget_s": budget, "regime": args.regime, "device": device_name(), "cpus": os.cpu_count(),
           "machine": platform.platform(),
           "data": "make_utkmask.py defaults, --eval-fraction 0.2: 1,959 training persons, 490 eval persons",
           "commit": subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip(),
           "date": time.strftime("%Y-%m-%d")}
    for side in ("recipe", "prior", "service"):
        if args.side not in ("all", side):
            if side in previous:
                out[side] = previous[side]
            continue
        folder = work / side
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TUNE_CACHE_DIR": str(folder / "cache"), "PYTHONPATH": str(ROOT)}
        env.pop("MLFLOW_TRACKING_URI", None)
        print(f"{side}: budget {budget:.0f} s, logs in {folder}", flush=True)
        try:
            if side == "recipe":
                out[side] = recipe(data, budget, parse_duration(args.reserve_recipe), folder, env, args.regime)
            elif side == "prior":
                out[side] = prior(data, budget, parse_duration(args.reserve_prior), args.space, folder, env, args.set)
            else:
                out[side] = service(data, budget, parse_duration(args.reserve_service), args.space, folder, env,
                                    args.set)
        except Refused as e:  # the budget holds not one epoch on this machine: it says so before training
            out[side] = {"refused": str(e)}
        out[side]["commit"] = out["commit"]  # a side run alone keeps the others' results, with their commit
        print(json.dumps(out[side], indent=1), flush=True)
    for side in ("recipe", "prior", "service"):
        if "f1_18" in out.get(side, {}):
            out[f"{side}_f1_18"] = out[side]["f1_18"]
    if "f1_18" in out.get("service", {}):
        for side in ("recipe", "prior"):
            if "f1_18" in out.get(side, {}):
                out[f"gain_over_{side}_f1_18"] = round(out["service"]["f1_18"] - out[side]["f1_18"], 4)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {results_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Is one submission better than another on the eval persons, or within what 490 persons can tell apart?

    .venv/bin/python benchmarks/paired.py A.csv B.csv [--data /tmp/utkmask]
    .venv/bin/python benchmarks/paired.py benchmarks/results/search-quality-pretrained-cpu-2cores-40m.json:service \
        benchmarks/results/search-quality-pretrained-cpu-2cores.json:service

Both submissions (ImageID,ans, or a side of a results file of benchmarks/search_quality.py, which keeps its
predictions: FILE.json:KEY, KEY a dotted path such as service.candidates_eval.all_equal) are scored against the
hidden answers of make_utkmask.py's eval persons, then scored again on 1,000 draws of those persons with
replacement, a person's seven photos drawn together (they share a gender and an age band, so drawing photos
alone would understate the spread). Prints each macro F1 over 18 classes, the difference A - B, its 2.5th and
97.5th percentiles over the draws and the share of draws in which A scored higher; --json writes the same as one
object. The persons are found again from make_utkmask.py's own
naming of the eval photos (its seed 0 and --eval-fraction, as benchmarks/search_quality.py makes the data set).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_quality import CLASS_CHARS, SHARED  # noqa: E402


def eval_persons(chips: Path, eval_fraction: float = 0.2, seed: int = 0) -> dict[str, int]:
    """ImageID -> the eval person it shows, as make_utkmask.py names the eval photos."""
    sys.path.insert(0, str(SHARED / "tools"))
    import make_utkmask as m

    faces = [(name, meta) for name in sorted(os.listdir(chips)) if (meta := m.parse(name)) and meta[0] >= 18]
    random.Random(seed).shuffle(faces)
    person = {}
    for i, (_, (age, gender, race)) in enumerate(faces[:int(round(len(faces) * eval_fraction))]):
        path = f"{i + 1:06d}_{m.GENDERS[gender]}_{m.RACES[race]}_{age}"
        for shot in m.FILES:
            person[hashlib.sha1(f"{path}/{shot}/{seed * 1_000_003 + i}".encode()).hexdigest() + ".jpg"] = i
    return person


def submitted(source: str, ids: pd.Series) -> np.ndarray:
    """The classes a submission gave the photos `ids`: from its CSV, or from a results file's FILE.json:KEY."""
    if ".json:" in source:
        path, key = source.split(".json:", 1)
        side = json.loads(Path(path + ".json").read_text())
        for part in key.split("."):
            side = side[part]
        if "predictions" not in side:
            raise SystemExit(f"{source} keeps no predictions (runs before 2026-12-07 did not)")
        if len(side["predictions"]) != len(ids):
            raise SystemExit(f"{source} holds {len(side['predictions'])} predictions, the answers {len(ids)} photos")
        return np.array([CLASS_CHARS.index(c) for c in side["predictions"]])
    return pd.read_csv(source).set_index("ImageID").loc[ids, "ans"].to_numpy()


def compare(a: str, b: str, data: Path, draws: int = 1000, chips: Path = SHARED / "data" / "utkface-chips",
            eval_fraction: float = 0.2) -> dict:
    answers = pd.read_csv(data / "eval_answers.csv")
    person = answers["ImageID"].map(eval_persons(chips, eval_fraction))
    if person.isna().any():
        raise SystemExit(f"{data} is not make_utkmask.py's data set with --eval-fraction {eval_fraction}")
    y = answers["ans"].to_numpy()
    pred = [submitted(p, answers["ImageID"]) for p in (a, b)]

    def f1(p, rows):
        return f1_score(y[rows], p[rows], average="macro", labels=range(18), zero_division=0)

    groups = [np.flatnonzero(person.to_numpy() == k) for k in sorted(person.unique())]
    every = np.arange(len(y))
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(draws):
        rows = np.concatenate([groups[k] for k in rng.integers(0, len(groups), len(groups))])
        diffs.append(f1(pred[0], rows) - f1(pred[1], rows))
    diffs = np.array(diffs)
    return {"a": a, "b": b, "persons": len(groups), "f1_18_a": round(f1(pred[0], every), 4),
            "f1_18_b": round(f1(pred[1], every), 4), "difference": round(f1(pred[0], every) - f1(pred[1], every), 4),
            "interval_95": [round(float(q), 4) for q in np.percentile(diffs, [2.5, 97.5])],
            "sd": round(float(diffs.std()), 4), "share_a_higher": round(float((diffs > 0).mean()), 3),
            "draws": draws}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--data", default="/tmp/utkmask", help="make_utkmask.py's data set (eval_answers.csv)")
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    r = compare(args.a, args.b, Path(args.data), args.draws)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"A {r['f1_18_a']:.4f}  B {r['f1_18_b']:.4f}  A - B {r['difference']:+.4f}, 95% of draws of the "
          f"{r['persons']} persons within [{r['interval_95'][0]:+.4f}, {r['interval_95'][1]:+.4f}] (sd "
          f"{r['sd']:.4f}); A higher in {100 * r['share_a_higher']:.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Synthetic demo data set for the mask / gender / age competition layout.

``tune data demo DIR`` calls :func:`write_demo`, which draws simple procedural cartoon faces (no real people)
so that the hyperparameter-search demo runs on a small CPU in a few minutes and still learns something:

* mask state: a coloured mask over nose and mouth (mask1..mask5, five colours / shapes per person), over
  mouth and chin only with the nose exposed (incorrect_mask), or no mask (normal);
* gender: long hair falling beside the face (female) or short hair on top (male);
* age: hair colour from dark (young) through grey to white (old), plus forehead wrinkles when older.

Every person gets a skin tone, background and head shape; every photo gets jitter in position, scale and
brightness plus mild Gaussian noise.  Output is deterministic in ``seed`` whatever the number of workers.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

W, H = 384, 512
MASK_FILES = ["mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"]
SHAPES = ["rect", "ellipse", "kn95", "chord", "pleated"]
PALETTE = [(235, 235, 240), (120, 170, 230), (25, 25, 30), (240, 150, 190), (40, 50, 120),
           (90, 160, 90), (200, 60, 50), (150, 150, 155), (230, 200, 80), (120, 80, 160)]
README = """SYNTHETIC DEMO DATA - NOT REAL PEOPLE
=====================================
Every image here was drawn procedurally by tune/demo_data.py (seed {seed}, {persons} persons) so that the
hyperparameter-search demo can run on a small CPU. It imitates only the on-disk layout of the mask / gender /
age competition (train/train.csv + train/images/<id>_<gender>_<race>_<age>/<7 photos>); use it for the
demo only, never to judge a real model.

Label rules used by the drawing:
* mask1..mask5 = mask worn correctly: a coloured mask (different colour / shape each) covers nose and mouth;
  incorrect_mask = the mask sits below the nose (mouth / chin only); normal = no mask.
* gender: female = long hair falling beside the face, male = short hair on top of the head.
* age (18..80): hair colour goes continuously (with noise) from dark (young) through grey to white (old),
  and forehead wrinkles appear and deepen with age.
* race is always the literal "Synthetic". About 10% of folders hold a junk AppleDouble file ._mask1.jpg.
"""


def _person(seed: int, idx: int) -> dict:
    """Draws every per-person attribute from a generator keyed on (seed, idx)."""
    rng = np.random.default_rng([seed, idx])
    age = int(rng.integers(18, 81))
    t = float(np.clip((age - 18) / 62 + rng.normal(0, 0.06), 0, 1))
    dark = np.array([35, 25, 18]) * rng.uniform(0.6, 1.6) + rng.integers(0, 20, 3)
    grey, white = np.full(3, 150.0), np.full(3, 238.0)
    hair = dark + (grey - dark) * np.clip((t - 0.15) / 0.45, 0, 1)
    hair += (white - grey) * np.clip((t - 0.6) / 0.4, 0, 1)
    skin = np.array([225, 180, 150]) * rng.uniform(0.45, 1.08) + rng.integers(-10, 10, 3)
    colours = rng.permutation(len(PALETTE))
    return {
        "rng": rng, "age": age, "gender": "female" if rng.random() < 0.5 else "male",
        "hair": _rgb(hair), "skin": _rgb(skin),
        "wrinkles": int(np.clip(round((age - 42) / 11 + rng.normal(0, 0.5)), 0, 3)),
        "shirt": _rgb(rng.integers(0, 256, 3)), "head": rng.uniform([0.9, 0.94], [1.1, 1.06]),
        "hair_len": rng.uniform(1.2, 1.9), "hair_w": rng.uniform(1.4, 1.65),
        "hair_top": rng.uniform(1.06, 1.2),
        "masks": [(PALETTE[c], s) for c, s in zip(colours[:5], rng.permutation(SHAPES), strict=True)],
        "bad_mask": (PALETTE[colours[5]], str(rng.choice(SHAPES))), "bg": _background(rng),
    }


def _background(rng: np.random.Generator) -> Image.Image:
    """A vertical two-colour gradient with a few random blocks (wall, window, furniture)."""
    top, bottom = rng.integers(30, 230, 3), rng.integers(30, 230, 3)
    ramp = np.linspace(0, 1, H, dtype=np.float32)[:, None, None]
    arr = (top + (bottom - top) * ramp) * np.ones((1, W, 1), np.float32)
    img = Image.fromarray(arr.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 4))):
        x, y = rng.integers(0, W), rng.integers(0, H)
        w, h = rng.integers(30, 160, 2)
        draw.rectangle((int(x), int(y), int(x + w), int(y + h)), fill=_rgb(rng.integers(0, 256, 3)))
    return img


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (int(c) for c in np.clip(values, 0, 255))
    return r, g, b


def _shade(colour: tuple, k: float) -> tuple:
    return tuple(int(min(255, c * k)) for c in colour)


def _draw_mask(d: ImageDraw.ImageDraw, p: Callable, colour: tuple, shape: str, top: float, bottom: float,
               lw: int) -> None:
    """Draws one mask between normalised heights top..bottom plus ear straps."""
    for s in (-1, 1):
        d.line([p(s * 0.8, top + 0.1), p(s * 1.0, -0.05)], fill=_shade(colour, 0.7), width=lw)
    box = [*p(-0.85, top), *p(0.85, bottom)]
    if shape in ("rect", "pleated"):
        d.rounded_rectangle(box, radius=int(box[3] - box[1]) // 6, fill=colour)
        if shape == "pleated":
            for f in (0.3, 0.5, 0.7):
                y = top + f * (bottom - top)
                d.line([p(-0.8, y), p(0.8, y)], fill=_shade(colour, 0.75), width=lw)
    elif shape == "ellipse":
        d.ellipse(box, fill=colour)
    elif shape == "kn95":
        mid = (top + bottom) / 2
        d.polygon([p(0, top - 0.05), p(0.8, top + 0.1), p(0.85, mid), p(0.5, bottom), p(0, bottom + 0.05),
                   p(-0.5, bottom), p(-0.85, mid), p(-0.8, top + 0.1)], fill=colour)
        d.line([p(0, top - 0.05), p(0, bottom + 0.05)], fill=_shade(colour, 0.75), width=lw)
    else:
        d.chord([*p(-0.85, 2 * top - bottom), *p(0.85, bottom)], 0, 180, fill=colour)


def _draw_face(img: Image.Image, per: dict, kind: str, rng: np.random.Generator) -> None:
    """Draws hair, head, features and (depending on kind) a mask onto img in place."""
    s = rng.uniform(0.92, 1.08)
    cx, cy = W / 2 + rng.uniform(-15, 15), H / 2 - 10 + rng.uniform(-15, 15)
    a, b = 95 * s * per["head"][0], 125 * s * per["head"][1]

    def p(x: float, y: float) -> tuple[float, float]:
        return cx + x * a, cy + y * b

    d, skin, hair, lw = ImageDraw.Draw(img), per["skin"], per["hair"], max(2, int(3 * s))
    edge = _shade(hair, 0.6)
    d.ellipse([*p(-1.9, 1.3), *p(1.9, 3.2)], fill=per["shirt"])
    d.rectangle([*p(-0.35, 0.6), *p(0.35, 1.5)], fill=_shade(skin, 0.85))
    if per["gender"] == "female":
        hw = per["hair_w"]
        d.ellipse([*p(-hw, -per["hair_top"]), *p(hw, 0.7)], fill=hair, outline=edge, width=lw)
        d.rounded_rectangle([*p(-hw, -0.1), *p(hw, per["hair_len"])], int(0.3 * a), hair, edge, lw)
        d.rectangle([*p(-hw + 0.05, -0.1), *p(hw - 0.05, 0.5)], fill=hair)
    for x in (-1, 1):
        d.ellipse([*p(x - 0.12, -0.15), *p(x + 0.12, 0.15)], fill=_shade(skin, 0.92))
    d.ellipse([*p(-1, -1), *p(1, 1)], fill=skin)
    top = per["hair_top"] - (0.0 if per["gender"] == "female" else 0.04)
    d.chord([*p(-1.04, -top), *p(1.04, top - 1.0)], 180, 360, fill=hair, outline=edge, width=lw)
    for i in range(per["wrinkles"]):
        y = -0.43 + 0.07 * i
        d.arc([*p(-0.45, y), *p(0.45, y + 0.12)], 200, 340, fill=_shade(skin, 0.5), width=lw + 1)
    for x in (-0.38, 0.38):
        d.line([p(x - 0.16, -0.2), p(x + 0.16, -0.2)], fill=_shade(hair, 0.9), width=lw + 2)
        d.ellipse([*p(x - 0.14, -0.1), *p(x + 0.14, 0.0)], fill=(245, 245, 245))
        d.ellipse([*p(x - 0.05, -0.1), *p(x + 0.05, 0.0)], fill=(40, 30, 25))
    d.polygon([p(0, 0.02), p(-0.14, 0.32), p(0.14, 0.32)], fill=_shade(skin, 0.62))
    d.chord([*p(-0.25, 0.42), *p(0.25, 0.62)], 0, 180, fill=(170, 60, 70))
    if kind.startswith("mask"):
        colour, shape = per["masks"][int(kind[-1]) - 1]
        _draw_mask(d, p, colour, shape, rng.uniform(0.0, 0.1), rng.uniform(0.9, 1.0), lw)
    elif kind == "incorrect_mask":
        colour, shape = per["bad_mask"]
        _draw_mask(d, p, colour, shape, rng.uniform(0.42, 0.62), rng.uniform(0.98, 1.12), lw)


def _photo(per: dict, kind: str, rng: np.random.Generator) -> Image.Image:
    img = per["bg"].copy()
    _draw_face(img, per, kind, rng)
    arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.8, 1.2)
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * rng.uniform(3, 8)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _build(job: tuple[str, int, int]) -> list[str]:
    """Writes the seven photos of one person; returns the train.csv row."""
    root, seed, idx = job
    per = _person(seed, idx)
    pid = f"{idx + 1:06d}"
    path = f"{pid}_{per['gender']}_Synthetic_{per['age']}"
    folder = Path(root) / "train" / "images" / path
    folder.mkdir(parents=True, exist_ok=True)
    for kind in MASK_FILES:
        _photo(per, kind, per["rng"]).save(folder / f"{kind}.jpg", quality=90)
    if per["rng"].random() < 0.1:
        (folder / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    return [pid, per["gender"], "Synthetic", str(per["age"]), path]


def write_demo(out: str | os.PathLike, persons: int = 240, seed: int = 0, workers: int | None = None,
               progress: bool = True) -> int:
    """Writes `persons` synthetic persons under out/train; returns the number of persons written."""
    root = Path(out)
    train = root / "train"
    if train.exists() and any(train.iterdir()):
        raise ValueError(f"{train} already exists and is not empty")
    (train / "images").mkdir(parents=True, exist_ok=True)
    jobs = [(str(root), seed, i) for i in range(persons)]
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=workers) as pool:
        rows = pool.map(_build, jobs, chunksize=max(1, persons // (workers * 8)))
        if progress:
            from tqdm import tqdm

            rows = tqdm(rows, total=persons, desc="demo data", unit="person")
        rows = list(rows)
    with open(train / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "gender", "race", "age", "path"], *rows])
    (root / "README.txt").write_text(README.format(seed=seed, persons=persons))
    return persons

"""The competition's data: reading its layout, labels, the person split and decoding the images.

    train.csv            id,gender,race,age,path   (one row per person)
    images/<path>/       mask1..mask5, incorrect_mask, normal   (.jpg/.jpeg/.png; hidden files skipped)

Labels: mask 0 wear, 1 incorrect, 2 not wear; gender 0 male, 1 female; age band 0 < a, 1 a <= age < b,
2 >= b. The 18-class label is 6 * mask + 3 * gender + age band. Two pairs of bounds (a, b): the training
labels use data.age_bounds (teams trained with >= 58 as old), the validation metrics and the split's strata
use data.score_age_bounds (the competition's: 30, 60). A model's band 2 is scored as band 2 whatever the
bounds it was trained with. A regression age head (model.age_head: regress) trains on the raw age instead.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from trainables.config import DataConfig, UserError

PHOTOS = {"mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0, "incorrect_mask": 1, "normal": 2}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
GENDERS = {"male": 0, "female": 1}
MASK_NAMES = ["wear", "incorrect", "not_wear"]
GENDER_NAMES = ["male", "female"]
HEADS = {"mask": 3, "gender": 2, "age": 3}  # the competition's classes per task; multi's heads, in this order
MAX_AGE = 130  # a larger age is a typo
AGE_CENTER, AGE_SCALE = 40.0, 20.0  # a regression age head predicts (age - AGE_CENTER) / AGE_SCALE


def age_band_names(bounds: tuple[int, int]) -> list[str]:
    a, b = bounds
    return [f"<{a}", f"{a}-{b - 1}", f">={b}"]


def class_names(task: str, bounds: tuple[int, int] = (30, 60)) -> list[str]:
    """Names of the classes a task's metric is computed over (18 composed classes for all and multi)."""
    if task == "mask":
        return MASK_NAMES
    if task == "gender":
        return GENDER_NAMES
    if task == "age":
        return age_band_names(bounds)
    return [f"{m}/{g}/{a}" for m in MASK_NAMES for g in GENDER_NAMES for a in age_band_names(bounds)]


def heads(task: str, age_head: str = "classify") -> dict[str, int]:
    """The model's output heads and their output columns, in order; a regressing age head has one column."""
    layout = dict(HEADS) if task == "multi" else {task: len(class_names(task))}
    if age_head == "regress":
        if "age" not in layout:
            raise ValueError(f"task {task} has no age head to regress")
        layout["age"] = 1
    return layout


def num_outputs(task: str, age_head: str = "classify") -> int:
    return sum(heads(task, age_head).values())


def age_to_target(age):
    """The regression head's target for an age (numpy array or tensor); `target_to_age` is its inverse."""
    return (age - AGE_CENTER) / AGE_SCALE


def target_to_age(target):
    return target * AGE_SCALE + AGE_CENTER


def compose18(mask: np.ndarray, gender: np.ndarray, age: np.ndarray) -> np.ndarray:
    """The competition's class: 6 * mask + 3 * gender + age band."""
    return 6 * mask + 3 * gender + age


def decompose18(label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return label // 6, (label // 3) % 2, label % 3


def age_band(age: np.ndarray | int, bounds: tuple[int, int]) -> np.ndarray:
    return np.digitize(age, bounds)


def train_dir(root: str | os.PathLike) -> Path:
    """The folder holding train.csv: `root` itself, or `root/train` when given the competition's top folder."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}")
    if not (root / "train.csv").is_file() and (root / "train" / "train.csv").is_file():
        return root / "train"
    if not (root / "train.csv").is_file():
        raise UserError(f"no train.csv in {root} (expected the competition's train/ folder)")
    return root


def read_table(root: str | os.PathLike, max_persons: int | None = None) -> pd.DataFrame:
    """One row per image: file, person, age, mask, gender. The first problem found is a UserError."""
    table, problems = scan(root, max_persons)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s): tune data check lists them)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)
    return table


def scan(root: str | os.PathLike, max_persons: int | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The image table of the persons that are in order, and one line per problem found in the others."""
    folder = train_dir(root)
    csv = folder / "train.csv"
    try:
        persons = pd.read_csv(csv, dtype={"id": str, "path": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"{csv}: not a readable CSV ({str(e).splitlines()[0]})") from None
    missing = {"id", "gender", "age", "path"} - set(persons.columns)
    if missing:
        raise UserError(f"{csv}: missing column(s) {', '.join(sorted(missing))}")
    if max_persons:
        persons = persons.iloc[:max_persons]
    rows, problems = [], []
    lines_of: dict[tuple[str, str], int] = {}  # ("id" or "path", value) -> the line that has it first
    for line, person in enumerate(persons.itertuples(index=False), start=2):
        where = f"{csv}, line {line}"
        if person.gender not in GENDERS:
            problems.append(f"{where}: gender must be male or female, got {person.gender!r}")
            continue
        try:
            age = int(person.age)
        except ValueError:
            problems.append(f"{where}: age must be a number, got {person.age!r}")
            continue
        if not 0 <= age <= MAX_AGE:
            problems.append(f"{where}: age must be between 0 and {MAX_AGE} years, got {person.age!r}")
            continue
        again = [(key, value) for key, value in (("id", str(person.id)), ("path", str(person.path)))
                 if (key, value) in lines_of]
        if again:  # one person in two rows, or two rows on one folder: the same photos in training and validation
            key, value = again[0]
            problems.append(f"{where}: {key} {value!r} is also on line {lines_of[key, value]}: one row per person, "
                            "each with a folder of its own")
            continue
        lines_of.update({("id", str(person.id)): line, ("path", str(person.path)): line})
        images = folder / "images" / str(person.path)
        if not images.is_dir():
            problems.append(f"{where}: folder {images} is missing")
            continue
        found = {f.stem: f for f in images.iterdir()
                 if not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES and f.stem in PHOTOS}
        absent = [name for name in PHOTOS if name not in found]
        if absent:
            problems.append(f"{images}: missing image(s) {', '.join(absent)}")
            continue
        for name, mask in PHOTOS.items():
            rows.append((str(found[name]), str(person.id), age, mask, GENDERS[person.gender]))
    if not rows and not problems:
        problems.append(f"{csv}: no persons")
    return pd.DataFrame(rows, columns=["file", "person", "age", "mask", "gender"]), problems


def split_persons(table: pd.DataFrame, cfg: DataConfig) -> tuple[list[str], list[str]]:
    """Train and validation persons: a seeded split by person, stratified by gender and the competition's age band
    (score_age_bounds, so that training with other age bounds keeps the same split)."""
    persons = table.drop_duplicates("person")
    strata = persons["gender"].to_numpy() * 3 + age_band(persons["age"].to_numpy(), cfg.score_age_bounds)
    n_val = max(1, round(len(persons) * cfg.val_fraction))
    if len(persons) - n_val < 1:
        raise UserError(f"{len(persons)} person(s) are too few to hold out {cfg.val_fraction:.0%} for validation")
    counts = np.bincount(strata)
    n_train = len(persons) - n_val
    if counts[counts > 0].min() < 2 or min(n_val, n_train) < (counts > 0).sum():
        strata = persons["gender"].to_numpy()  # too few persons for every stratum: gender alone
        if np.bincount(strata).min() < 2 or min(n_val, n_train) < 2:
            strata = None
    from sklearn.model_selection import train_test_split

    train, val = train_test_split(persons["person"].to_numpy(), test_size=n_val, random_state=cfg.split_seed,
                                  stratify=strata)
    return sorted(train), sorted(val)


def fold_persons(table: pd.DataFrame, cfg: DataConfig, folds: int) -> list[tuple[list[str], list[str]]]:
    """K (train, validation) splits of the persons, each person validated exactly once; seeded by split_seed and
    stratified like `split_persons` (by gender alone, or not at all, when a stratum has fewer than K persons)."""
    persons = table.drop_duplicates("person")
    if not 2 <= folds <= len(persons):
        raise UserError(f"--folds must be between 2 and the number of persons ({len(persons)}), got {folds}")
    strata = persons["gender"].to_numpy() * 3 + age_band(persons["age"].to_numpy(), cfg.score_age_bounds)
    if np.bincount(strata)[np.bincount(strata) > 0].min() < folds:
        strata = persons["gender"].to_numpy()
        if np.bincount(strata).min() < folds:
            strata = np.zeros(len(persons), int)
    ids = persons["person"].to_numpy()
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(folds, shuffle=True, random_state=cfg.split_seed)
    return [(sorted(ids[a]), sorted(ids[b])) for a, b in splitter.split(ids, strata)]


def targets(table: pd.DataFrame, task: str, bounds: tuple[int, int], age_head: str = "classify") -> np.ndarray:
    """Labels for a task: (N,) class ids, or (N, 3) mask/gender/age for multi; the age is the band at `bounds`,
    or the age in years for a regression head."""
    band = table["age"].to_numpy() if age_head == "regress" else age_band(table["age"].to_numpy(), bounds)
    mask, gender = table["mask"].to_numpy(), table["gender"].to_numpy()
    by_task = {"mask": mask, "gender": gender, "age": band, "all": compose18(mask, gender, band)}
    if task == "multi":
        return np.stack([mask, gender, band], axis=1)
    return by_task[task]


def sampling_classes(table: pd.DataFrame, task: str, bounds: tuple[int, int]) -> np.ndarray:
    """The classes `data.sampler: balanced` evens out: the task's (the 18 for all and multi; age in its bands at
    `bounds`, for a regressing head too)."""
    return targets(table, "all" if task == "multi" else task, bounds)


FACE_MIN_PX = 16  # a photo smaller than this on a side cannot show a face: refused (tune data check warns sooner)


def load_image(file: str, size: int, center_crop: tuple[int, int] | None) -> np.ndarray:
    """Decode one photo, cut its centre (height, width in the photo's pixels) and resize it to size x size.
    UserError for a photo that does not decode, or one too small to show a face."""
    try:
        with Image.open(file) as img:
            full_w, full_h = img.size
            if min(full_w, full_h) < FACE_MIN_PX:
                raise UserError(f"image {file} is {full_w}x{full_h} pixels: too small to be a photo of a face "
                                f"(at least {FACE_MIN_PX} on each side)")
            crop_h, crop_w = center_crop if center_crop else (full_h, full_w)
            crop_h, crop_w = min(crop_h, full_h), min(crop_w, full_w)
            img.draft("RGB", (full_w * size // crop_w, full_h * size // crop_h))  # JPEG: decode at a lower scale
            scale = img.size[0] / full_w
            img = img.convert("RGB")
            left, top = (full_w - crop_w) / 2 * scale, (full_h - crop_h) / 2 * scale
            box = (left, top, left + crop_w * scale, top + crop_h * scale)
            out = img.resize((size, size), Image.BILINEAR, box=box, reducing_gap=2.0)
            return np.asarray(out, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot read image {file}: {e}") from None


def load_images(files: list[str], size: int, center_crop: tuple[int, int] | None, workers: int = 1,
                progress: bool = False, desc: str = "decoding images") -> np.ndarray:
    """All photos decoded into one uint8 array (N, size, size, 3), in parallel threads."""
    out = np.empty((len(files), size, size, 3), np.uint8)
    decode_into(out, files, size, center_crop, workers, progress, desc)
    return out


def decode_into(out: np.ndarray, files: list[str], size: int, center_crop: tuple[int, int] | None, workers: int = 1,
                progress: bool = False, desc: str = "decoding images") -> None:
    """Decode photo i into out[i] for every file, in parallel threads (Pillow releases the GIL)."""

    def one(i: int) -> None:
        out[i] = load_image(files[i], size, center_crop)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(tqdm(pool.map(one, range(len(files))), total=len(files), desc=desc, disable=None if progress else True,
                  mininterval=2.0, unit="img"))

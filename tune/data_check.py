"""`tune data check DIR`: what a data set in the competition layout holds, and what is wrong with it."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
from PIL import Image
from tqdm import tqdm

from trainables.config import UserError
from trainables.data import class_names, load_image, scan, targets


def decode_all(files: list[str], workers: int) -> tuple[list[str], list[tuple[str, int, int]]]:
    """Every photo decoded: one line per photo that does not decode (or cannot show a face), and the
    (file, width, height) of every one that does."""
    def one(file: str) -> str | tuple[str, int, int]:
        try:
            load_image(file, 32, None)
            with Image.open(file) as img:
                return (file, *img.size)
        except UserError as e:
            return str(e)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        found = list(tqdm(pool.map(one, files), total=len(files), desc="decoding", unit="img", mininterval=2.0,
                          disable=None))
    return [f for f in found if isinstance(f, str)], [f for f in found if not isinstance(f, str)]


def small_photos(sizes: list[tuple[str, int, int]], image_size: int) -> str | None:
    """One line naming the photos whose shorter side is under half the model's input (upscaled over 2x)."""
    small = [(file, w, h) for file, w, h in sizes if 2 * min(w, h) < image_size]
    if not small:
        return None
    shown = ", ".join(f"{file} ({w}x{h})" for file, w, h in small[:3])
    more = f" and {len(small) - 3} more" if len(small) > 3 else ""
    return (f"{len(small)} photo(s) are far smaller than a model input of {image_size} px (a side under half of it):"
            f" {shown}{more}")


def class_table(table: pd.DataFrame, bounds: tuple[int, int] = (30, 60)) -> pd.DataFrame:
    """Images per class of the 18-class table (class = 6 * mask + 3 * gender + age band)."""
    counts = pd.Series(targets(table, "all", bounds)).value_counts().reindex(range(18), fill_value=0)
    names = class_names("all", bounds)
    return pd.DataFrame({"class": range(18), "mask/gender/age": names, "images": counts.to_numpy()})


def check_data(root: str, image_size: int = 224) -> int:
    """Print the summary, the problems and a warning for photos far smaller than `image_size`; returns the number
    of problems."""
    table, problems = scan(root)
    unreadable, sizes = decode_all(table["file"].tolist(), os.cpu_count() or 1)
    problems += unreadable
    persons = table["person"].nunique()
    print(f"{root}: {persons} persons, {len(table)} images, ages {table['age'].min()}-{table['age'].max()}"
          if len(table) else f"{root}: no usable persons")
    if len(table):
        print(class_table(table).to_string(index=False))
    if warning := small_photos(sizes, image_size):
        print(f"warning: {warning}")
    for line in problems:
        print(f"problem: {line}")
    print(f"{len(problems)} problem(s)")
    return len(problems)

"""`tune data check DIR`: what a data set in the competition layout holds, and what is wrong with it."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
from tqdm import tqdm

from trainables.config import UserError
from trainables.data import class_names, load_image, scan, targets


def unreadable(files: list[str], workers: int) -> list[str]:
    """One line per photo that does not decode."""
    def one(file: str) -> str | None:
        try:
            load_image(file, 32, None)
        except UserError as e:
            return str(e)
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        found = tqdm(pool.map(one, files), total=len(files), desc="decoding", unit="img", mininterval=2.0, disable=None)
        return [line for line in found if line]


def class_table(table: pd.DataFrame, bounds: tuple[int, int] = (30, 60)) -> pd.DataFrame:
    """Images per class of the 18-class table (class = 6 * mask + 3 * gender + age band)."""
    counts = pd.Series(targets(table, "all", bounds)).value_counts().reindex(range(18), fill_value=0)
    names = class_names("all", bounds)
    return pd.DataFrame({"class": range(18), "mask/gender/age": names, "images": counts.to_numpy()})


def check_data(root: str) -> int:
    """Print the summary and the problems; returns the number of problems."""
    table, problems = scan(root)
    problems += unreadable(table["file"].tolist(), os.cpu_count() or 1)
    persons = table["person"].nunique()
    print(f"{root}: {persons} persons, {len(table)} images, ages {table['age'].min()}-{table['age'].max()}"
          if len(table) else f"{root}: no usable persons")
    if len(table):
        print(class_table(table).to_string(index=False))
    for line in problems:
        print(f"problem: {line}")
    print(f"{len(problems)} problem(s)")
    return len(problems)

"""Decoded photos, once per machine: one uint8 array file per data set and preprocessing, memory-mapped.

Decoding a JPEG costs milliseconds of a core; a trial that decoded its photos itself (or every epoch) would
be starved by its loader, and so would every other trial on the machine. So the first process that needs a
data set at a given size decodes it (in parallel threads, with a progress bar) into

    <cache dir>/<key>.npy     (N, S, S, 3) uint8, photos in the order of the file list
    <cache dir>/<key>.json    what it holds: data folder, photos, size, centre crop, bytes, created

and every trial on the machine opens that file with `np.load(mmap_mode="r")`: the operating system's page
cache holds one copy, shared by all of them. A file lock makes one process fill it while the others wait
(several trials may start at once); the file appears under its final name only when complete. The key is a
fingerprint of the file list (paths, sizes, modification times) and the preprocessing, so changed data gets
a new entry, and the stale entries of the same data folder and preprocessing are removed then.

The cache folder: `data.cache_dir`, else $TUNE_CACHE_DIR, else ~/.cache/tune/images. `tune cache ls` lists
it, `tune cache clear` empties it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import PIL
from filelock import FileLock, Timeout

from trainables.config import UserError
from trainables.data import decode_into, read_table

VERSION = 1  # bump when the decoding changes what a cached photo holds
KEY = re.compile(r"^[0-9a-f]{24}\.")  # the cache's own files: <key>.npy, .json, .partial.npy, .lock
FILLED: list[str] = []  # the keys this process decoded (the others it found, or waited for)


def cache_dir(configured: str | None = None) -> Path:
    folder = configured or os.environ.get("TUNE_CACHE_DIR") or Path.home() / ".cache" / "tune" / "images"
    return Path(folder).expanduser()


def fingerprint(files: list[str], size: int, center_crop: tuple[int, int] | None, contents: bool = True) -> str:
    """A key for these files as they are on disk now (contents=False: whatever they hold), decoded this way."""
    h = hashlib.sha256(json.dumps([VERSION, PIL.__version__, size, center_crop]).encode())
    for file in files:
        st = os.stat(file) if contents else None
        h.update((f"{file}\0{st.st_size}\0{st.st_mtime_ns}\n" if st else f"{file}\n").encode())
    return h.hexdigest()[:24]


def cached_images(files: list[str], size: int, center_crop: tuple[int, int] | None, folder: Path,
                  data_root: str = "", workers: int = 1, progress: bool = False) -> np.ndarray:
    """The photos decoded to (N, size, size, 3) uint8, memory-mapped read-only; decoded first if not cached."""
    folder.mkdir(parents=True, exist_ok=True)
    key = fingerprint(files, size, center_crop)
    path = folder / f"{key}.npy"
    if not path.exists():
        with FileLock(str(folder / f"{key}.lock")):
            if not path.exists():  # another process may have filled it while this one waited
                _fill(path, files, size, center_crop, data_root, workers, progress)
    return np.load(path, mmap_mode="r")


def _fill(path: Path, files: list[str], size: int, center_crop: tuple[int, int] | None, data_root: str,
          workers: int, progress: bool) -> None:
    partial = path.with_suffix(".partial.npy")
    needed = len(files) * size * size * 3
    free = shutil.disk_usage(path.parent).free
    if free < needed * 1.02:
        raise UserError(f"the photo cache needs {needed / 2**30:.1f} GiB in {path.parent}, which has "
                        f"{free / 2**30:.1f} GiB free: set data.cache_dir or $TUNE_CACHE_DIR to a larger disk, "
                        "or data.cache: false")
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3))
    try:
        decode_into(out, files, size, center_crop, workers, progress, desc=f"caching images at {size} px")
        out.flush()
    except BaseException:
        del out
        partial.unlink(missing_ok=True)
        raise
    del out
    info = {"data": str(data_root), "files": fingerprint(files, size, center_crop, contents=False),
            "images": len(files),
            "size": size, "center_crop": list(center_crop) if center_crop else None,
            "bytes": partial.stat().st_size, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    for stale in entries(path.parent):  # the same files and preprocessing, from before a file changed
        if stale.get("files") == info["files"]:
            remove(path.parent, stale["key"])
    path.with_suffix(".json").write_text(json.dumps(info, indent=1))
    os.replace(partial, path)
    FILLED.append(path.stem)


def entries(folder: Path) -> list[dict]:
    """What the cache folder holds: one dict per complete entry (key, data, images, size, bytes, ...)."""
    out = []
    for meta in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if meta.with_suffix(".npy").exists():
            out.append({"key": meta.stem, **json.loads(meta.read_text())})
    return out


def remove(folder: Path, key: str) -> None:
    for suffix in (".npy", ".json", ".partial.npy", ".lock"):
        (folder / f"{key}{suffix}").unlink(missing_ok=True)


def clear(folder: Path) -> int:
    """Remove every entry but those being filled now (other files in the folder are left alone); returns the
    bytes freed."""
    freed = 0
    keys = {p.name[:24] for p in folder.iterdir() if KEY.match(p.name)} if folder.is_dir() else set()
    for key in sorted(keys):
        try:
            with FileLock(str(folder / f"{key}.lock"), timeout=0):
                freed += sum(p.stat().st_size for p in folder.glob(f"{key}.*npy"))
                for suffix in (".npy", ".json", ".partial.npy"):
                    (folder / f"{key}{suffix}").unlink(missing_ok=True)
        except Timeout:
            continue  # another process is filling it
        (folder / f"{key}.lock").unlink(missing_ok=True)
    return freed


def prepare_node(root: str, max_persons: int | None, decodings: list, configured: str | None = None) -> str | None:
    """On one node of a cluster, before its first trial: read the data folder and decode its photos into this
    node's cache, at each (size, centre crop) the study uses. Returns what went wrong, or None."""
    try:
        files = read_table(root, max_persons)["file"].tolist()
        for size, crop in decodings:
            cached_images(files, size, tuple(crop) if crop else None, cache_dir(configured), root,
                          workers=os.cpu_count() or 1)
    except Exception as e:  # noqa: BLE001 - whatever it is, named with the node by the driver in one line
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None

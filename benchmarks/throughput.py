"""Training throughput: per-sample JPEG decoding vs the decoded-photo cache vs tensors already on the device.

Measures, in one run on one machine, for each model:
  load  (a) per-sample loader images/s, loading alone: each drawn photo decoded whole by Pillow, cut and
            resized (the competition's usual loader), then the same augmentations as (b)
        (a') per-sample loader with this service's decoder (`DecodedPhotos`: JPEG draft mode, which decodes
            at a reduced scale; what `data.cache: false` does)
        (b) cached loader images/s, loading alone (`CachedPhotos` over the memory-mapped cache)
  train (a) training images/s fed by the per-sample loader (a)
        (b) training images/s fed by the cached loader (the service's pipeline)
        (c) training images/s on one uint8 batch already on the device (the ceiling)
and on a GPU the aggregate training images/s of 1, 2 and 4 concurrent trials (processes) sharing it, each
with its share of the GPU's memory, reading the same cache. The same augmentations (`augment.preset`, light
by default) run in (a) and (b); (a) and (b) use the loader workers a trial would (its CPUs - 1).

Prints a table and writes benchmarks/results/throughput-<device>.json with the ratios of the first model
as top-level keys: ratio_cached_over_per_sample (train b/a), ratio_cached_over_ceiling (train b/c),
ratio_cached_over_per_sample_loading (load b/a) and ratio_cached_over_draft_decoding_loading (load b/a').

    python benchmarks/throughput.py                     # defaults for this machine (CPU or GPU)
    python benchmarks/throughput.py --models resnet18@112 --seconds 20 --data /path/to/train
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from trainables import cache, data  # noqa: E402
from trainables.config import AugmentConfig, ModelConfig  # noqa: E402
from trainables.loader import CachedPhotos, DecodedPhotos, Photos, train_loader  # noqa: E402
from trainables.loop import Device  # noqa: E402
from trainables.models import build_model, normalization  # noqa: E402
from trainables.transforms import train_transform  # noqa: E402

SHARED = ROOT.parent / "shared"
DEFAULTS = {"cpu": ["resnet10t@64", "mobilenetv3_small_100@64"], "cuda": ["efficientnet_b0@224", "resnet18@112"]}


def real_faces(persons: int, out: Path) -> Path:
    """A data set in the competition's layout (384x512 JPEGs) from ../shared's real faces."""
    subprocess.run([sys.executable, str(SHARED / "tools" / "make_utkmask.py"), "--chips",
                    str(SHARED / "data" / "utkface-chips"), "--out", str(out), "--persons", str(persons)],
                   check=True, capture_output=True)
    return out / "train"


class PillowPhotos(DecodedPhotos):
    """The usual per-sample loader: decode the whole photo, cut its centre, resize (no JPEG draft mode)."""

    def read(self, i: int) -> np.ndarray:
        with Image.open(self.files[i]) as img:
            img = img.convert("RGB")
            w, h = img.size
            crop_h, crop_w = self.center_crop or (h, w)
            left, top = (w - crop_w) // 2, (h - crop_h) // 2
            img = img.crop((left, top, left + crop_w, top + crop_h)).resize((self.size, self.size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)


class Setup:
    """One model at one input size, with its loaders over the same photos."""

    def __init__(self, spec: str, files: list[str], device: str, batch: int, workers: int, preset: str,
                 cache_folder: Path):
        backbone, size = spec.split("@")
        self.spec, self.size, self.batch, self.workers = spec, int(size), batch, workers
        self.augment = AugmentConfig(preset=preset)
        self.files, self.labels = files, np.zeros(len(files), np.int64)
        started = time.perf_counter()
        self.images = cache.cached_images(files, self.size, self.augment.center_crop, cache_folder, "benchmark",
                                          workers=os.cpu_count() or 1)
        self.cache_fill_s = time.perf_counter() - started
        self.model = build_model(ModelConfig(backbone=backbone, image_size=self.size), 18)
        self.dev = Device(device, *normalization(self.model))
        self.model.to(self.dev.device)
        if self.dev.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

    def loader(self, source: str):
        """source: cached, pillow (per sample, whole decode) or draft (per sample, the service's decoder)."""
        transform = train_transform(self.augment, self.size, seed=0)
        crop = self.augment.center_crop
        dataset: Photos = {
            "cached": lambda: CachedPhotos(self.images, np.arange(len(self.files)), self.labels, transform),
            "pillow": lambda: PillowPhotos(self.files, self.size, crop, self.labels, transform),
            "draft": lambda: DecodedPhotos(self.files, self.size, crop, self.labels, transform),
        }[source]()
        return train_loader(dataset, self.batch, seed=0, workers=self.workers, pin_memory=self.dev.cuda)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        x, y = self.dev.batch(images), labels.to(self.dev.device, non_blocking=True)
        with self.dev.autocast():
            loss = torch.nn.functional.cross_entropy(self.model(x).float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def sync(self) -> None:
        if self.dev.cuda:
            torch.cuda.synchronize()


def batches(loader):
    """Batches without end: the loader's epochs one after another."""
    while True:
        yield from loader


def rate(setup: Setup, source, train: bool, seconds: float, warmup: int) -> float:
    """Images/s over about `seconds`, after `warmup` batches."""
    setup.model.train()
    for _ in range(warmup):
        images, labels = next(source)
        if train:
            setup.step(images, labels)
    setup.sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        images, labels = next(source)
        if train:
            setup.step(images, labels)
        count += len(images)
    setup.sync()
    return count / (time.perf_counter() - start)


def on_device(setup: Setup):
    """The same uint8 batch, already on the device, again and again."""
    images, labels = next(iter(setup.loader("cached")))
    images, labels = images.to(setup.dev.device), labels.to(setup.dev.device)
    while True:
        yield images, labels


def measure(setup: Setup, seconds: float, warmup: int) -> dict:
    out = {"model": setup.spec, "batch": setup.batch, "workers": setup.workers, "cache_fill_s": setup.cache_fill_s}
    out["load_per_sample"] = rate(setup, batches(setup.loader("pillow")), False, seconds, warmup)
    out["load_per_sample_draft"] = rate(setup, batches(setup.loader("draft")), False, seconds, warmup)
    out["load_cached"] = rate(setup, batches(setup.loader("cached")), False, seconds, warmup)
    out["train_per_sample"] = rate(setup, batches(setup.loader("pillow")), True, seconds, warmup)
    out["train_cached"] = rate(setup, batches(setup.loader("cached")), True, seconds, warmup)
    out["train_ceiling"] = rate(setup, on_device(setup), True, seconds, warmup)
    out["ratio_cached_over_per_sample"] = out["train_cached"] / out["train_per_sample"]
    out["ratio_cached_over_ceiling"] = out["train_cached"] / out["train_ceiling"]
    out["ratio_cached_over_per_sample_loading"] = out["load_cached"] / out["load_per_sample"]
    out["ratio_cached_over_draft_decoding_loading"] = out["load_cached"] / out["load_per_sample_draft"]
    return out


def _concurrent_trial(args) -> float:
    spec, files, batch, workers, preset, folder, share, seconds, warmup, barrier = args
    torch.cuda.set_per_process_memory_fraction(0.95 * share)
    setup = Setup(spec, files, "cuda", batch, workers, preset, folder)
    source = batches(setup.loader("cached"))
    for _ in range(warmup):
        setup.step(*next(source))
    setup.sync()
    barrier.wait()  # every trial is warm: measure them together
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch_images, labels = next(source)
        setup.step(batch_images, labels)
        images += len(batch_images)
    setup.sync()
    return images / (time.perf_counter() - start)


def concurrent(spec: str, files: list[str], batch: int, preset: str, folder: Path, seconds: float, warmup: int,
               counts=(1, 2, 4)) -> dict:
    """Aggregate training images/s of k trials sharing the GPU (k processes, each with 1/k of its memory)."""
    context = multiprocessing.get_context("spawn")
    out = {"model": spec}
    for k in counts:
        workers = max(1, (os.cpu_count() or 1) // k - 1)
        with context.Manager() as manager:
            barrier = manager.Barrier(k)
            with context.Pool(k) as pool:
                rates = pool.map(_concurrent_trial, [(spec, files, batch, workers, preset, folder, 1 / k, seconds,
                                                      warmup, barrier)] * k)
        out[f"trials_{k}"] = {"each": rates, "aggregate": sum(rates)}
        print(f"  {k} trial(s) on the GPU: {sum(rates):,.0f} images/s together", flush=True)
    out["ratio_4_over_1"] = out["trials_4"]["aggregate"] / out["trials_1"]["aggregate"] if 4 in counts else None
    return out


def table(results: list[dict]) -> str:
    head = (f"{'model':<26}{'load a':>9}{'load a´':>9}{'load b':>9}{'train a':>9}{'train b':>9}{'train c':>9}"
            f"{'b/a':>7}{'b/c':>7}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r['model']:<26}{r['load_per_sample']:>9,.0f}{r['load_per_sample_draft']:>9,.0f}"
                     f"{r['load_cached']:>9,.0f}"
                     f"{r['train_per_sample']:>9,.0f}{r['train_cached']:>9,.0f}{r['train_ceiling']:>9,.0f}"
                     f"{r['ratio_cached_over_per_sample']:>7.2f}{r['ratio_cached_over_ceiling']:>7.2f}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="a train/ folder in the competition layout (default: real faces from ../shared)")
    p.add_argument("--persons", type=int, default=300, help="persons of the real-faces set to build")
    p.add_argument("--models", nargs="+", help="backbone@size, e.g. resnet18@112 (default: per device)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 64 on the CPU, 256 on a GPU")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: a trial's, CPUs - 1)")
    p.add_argument("--preset", default="light", choices=["none", "light", "medium", "heavy"])
    p.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    p.add_argument("--warmup", type=int, default=3, help="batches before each measurement")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    cuda = args.device == "cuda"
    batch = args.batch or (256 if cuda else 64)
    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 1) - 1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else real_faces(args.persons, Path(tmp) / "faces")
        files = data.read_table(root)["file"].tolist()
        folder = Path(tmp) / "cache"
        print(f"{len(files)} photos from {root}; device {args.device}; batch {batch}; {workers} loader workers; "
              f"augment {args.preset}", flush=True)
        results = []
        for spec in args.models or DEFAULTS["cuda" if cuda else "cpu"]:
            setup = Setup(spec, files, args.device, batch, workers, args.preset, folder)
            results.append(measure(setup, args.seconds, args.warmup))
            print(table(results[-1:]).splitlines()[-1], flush=True)
            del setup
        shared = None
        if cuda:
            spec = next((m for m in args.models or DEFAULTS["cuda"] if m.startswith("resnet18")), results[-1]["model"])
            shared = concurrent(spec, files, batch, args.preset, folder, args.seconds, args.warmup)
    name = torch.cuda.get_device_name().replace(" ", "-") if cuda else "cpu"
    report = {
        "device": name, "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"), "photos": len(files), "batch": batch, "loader_workers": workers,
        "augment_preset": args.preset, "bf16": cuda, "seconds_per_measurement": args.seconds,
        "ratio_cached_over_per_sample": results[0]["ratio_cached_over_per_sample"],
        "ratio_cached_over_ceiling": results[0]["ratio_cached_over_ceiling"],
        "ratio_cached_over_per_sample_loading": results[0]["ratio_cached_over_per_sample_loading"],
        "ratio_cached_over_draft_decoding_loading": results[0]["ratio_cached_over_draft_decoding_loading"],
        "models": results, "concurrent_trials": shared,
        "units": "images/s; load = loading alone (a: per-sample Pillow, a': per-sample JPEG draft, b: cached); "
                 "train a/b/c = per-sample Pillow loader / cached loader / batch already on the device",
    }
    print("\n" + table(results))
    out = Path(args.out) / f"throughput-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

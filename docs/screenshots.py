"""The README's screenshots of the MLflow UI, taken in a real browser (headless Chromium) over a real study.

    apt-get install chromium                     # Debian's package
    make demo && .venv/bin/tune report STUDY     # a study, and its report on the parent run
    .venv/bin/python docs/screenshots.py STUDY   # writes docs/screenshots/*.png

It starts `tune ui --study STUDY` on a free port, opens the address it prints (the study's trials, best first),
one trial's page (its learning curves, its confusion matrix) and the study's report, and keeps each picture
small (cropped, 256 colours).
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from tune.tracking import connect, find_study_run, tracking_uri, trial_runs

OUT = Path(__file__).resolve().parent / "screenshots"


def main(study: str) -> None:
    client = connect(tracking_uri())
    parent = find_study_run(client, study)
    if parent is None:
        sys.exit(f"no study {study!r} in {tracking_uri()}")
    experiment = client.get_run(parent).info.experiment_id
    best = max(trial_runs(client, parent), key=lambda r: r.data.metrics.get("best_val_f1", -1)).info.run_id
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen([sys.executable, "-m", "tune", "ui", "--study", study, "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = next(m.group(1) for line in ui.stdout if (m := re.match(r"MLflow UI: (\S+)", line)))
        base = f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs"
        OUT.mkdir(exist_ok=True)
        save(shot(url, 1900, 640), "runs.png", (0, 0, 1530, 640))
        for _ in range(5):  # the charts draw once their metric histories arrive: until the page has them
            metrics = shot(f"{base}/{best}/model-metrics?workflowType=machine_learning", 1600, 3200)
            if len(metrics.crop((0, 2085, 1180, 2810)).getcolors(1 << 16) or []) > 200:
                break
        page = Image.new("RGB", (1180, 235 + 725), "white")  # the page's head, then the rows of loss and F1 curves
        page.paste(metrics.crop((0, 0, 1180, 235)), (0, 0))
        page.paste(metrics.crop((0, 2085, 1180, 2810)), (0, 235))
        save(page, "trial_curves.png")
        save(shot(f"{base}/{best}/artifacts/confusion_matrix.png?workflowType=machine_learning", 1600, 1000),
             "trial_confusion.png", (200, 0, 1180, 1000))
        save(shot(f"{base}/{parent}/artifacts/learning_curves.png?workflowType=machine_learning", 1600, 720),
             "study_report.png", (200, 0, 1180, 720))
    finally:
        ui.terminate()


def shot(url: str, width: int, height: int) -> Image.Image:
    with tempfile.TemporaryDirectory() as profile:
        path = Path(profile) / "shot.png"
        subprocess.run([shutil.which("chromium") or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--window-size={width},{height}", "--virtual-time-budget=30000",
                        f"--user-data-dir={profile}", f"--screenshot={path}", url],
                       check=True, capture_output=True, timeout=180)
        time.sleep(0.1)
        return Image.open(path).convert("RGB")


def save(image: Image.Image, name: str, box: tuple[int, int, int, int] | None = None) -> None:
    image = image.crop(box) if box else image
    image.quantize(256).save(OUT / name, optimize=True)
    print(f"{OUT / name}: {image.width}x{image.height}, {(OUT / name).stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main(sys.argv[1])

"""`tune ui`: the MLflow UI on 127.0.0.1, opened on a study's trials.

MLflow 3 always opens on its GenAI home, so the address to open is that of the study's runs table in the view
`tracking.set_trials_view` saved (only the trials, best first, with their scores and sampled parameters).
The server runs in a process group of its own, stopped with all its workers when `tune ui` stops; what it prints
(MLflow's and Uvicorn's lines, deprecation warnings) goes to `mlruns/logs/ui.log`, and the person sees one line.
MLflow's job runner (seven `huey` consumers for its GenAI jobs, which a study never submits) is not started unless
MLFLOW_SERVER_ENABLE_JOB_EXECUTION says so: it took about 18 CPU-s to start, three times the UI's own, on the
machine the trials train on.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import webbrowser

from trainables.config import UserError
from tune.tracking import STORE, artifact_root, connect, is_server, study_experiment, trials_url

LOG = STORE / "logs" / "ui.log"


def serve(uri: str, port: int, study: str | None) -> int:
    """Run the MLflow UI over the store `uri` until Ctrl-C; print (and on a desktop open) the study's trials."""
    experiment = study_experiment(connect(uri), study)
    if is_server(uri):  # a team's tracking server has its own UI
        url = trials_url(uri.rstrip("/"), experiment) if experiment else uri
        print(f"MLflow UI: {url}")
        open_on_desktop(url)
        return 0
    if _answers(port):
        raise UserError(f"port {port} is taken on 127.0.0.1: pass --port")
    base = f"http://127.0.0.1:{port}"
    url = trials_url(base, experiment) if experiment else base
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--default-artifact-root",
               artifact_root(), "--host", "127.0.0.1", "--port", str(port)]
    LOG.parent.mkdir(parents=True, exist_ok=True)
    log = LOG.open("w")
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    server = subprocess.Popen(command, start_new_session=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    for stop in (signal.SIGTERM, signal.SIGHUP):  # a closed terminal or a kill still stops the server
        signal.signal(stop, lambda *_: sys.exit(0))
    try:
        while not _answers(port):
            if server.poll() is not None:
                last = [line for line in LOG.read_text().splitlines() if line.strip()][-1:] or [""]
                raise UserError(f"the MLflow UI did not start (exit code {server.returncode}): {last[0].strip()} "
                                f"(all of it in {LOG})")
            time.sleep(0.5)
        print(f"MLflow UI: {url}" + ("\n(no study in the store yet)" if not experiment else "")
              + f"\nCtrl-C stops it (the server's log: {LOG})", flush=True)
        open_on_desktop(url)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
        except ProcessLookupError:  # the group is gone already
            pass
        server.wait()
        log.close()


def open_on_desktop(url: str) -> None:
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform == "darwin":
        webbrowser.open(url)


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0

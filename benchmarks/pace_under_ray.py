"""Does a trial train as fast inside `tune run` as in `tune train`? One configuration both ways, on the same CPUs.

    .venv/bin/python benchmarks/pace_under_ray.py --label after          (about 25 minutes on 2 cores)
    .venv/bin/python benchmarks/pace_under_ray.py --shape per-cpu --persons 300

The configuration is search_spaces/cpu.yaml's fixed values (efficientnet_lite0 with ImageNet weights at 112 px,
its head warm-up and centre crop) on the first --persons persons of the real faces of ../shared, --epochs long,
ASHA off. Two shapes of study:

  every-cpu  one trial on every CPU     `tune train --cpus N`              against `tune run`, 1 trial of N CPUs
  per-cpu    one trial per CPU          N `tune train --cpus 1` at once     against `tune run`, N trials of 1 CPU

For each, from the MLflow store both sides log to: every epoch's seconds (`epoch_time_s`) and where they went
(`train_s`, of which `loader_wait_s`, and `val_s`), and the wall seconds from one epoch's end to the next
(checkpoints and reports included); `epoch_ratio` is the service's median epoch over `tune train`'s (epochs 2 on:
the first holds the loader's start and the head warm-up). A sampler reads /proc every --interval seconds and
gives each process of either side (the driver, the trials, their loader workers, each of Ray's own) its CPU
seconds over the window where every trial trains (from the first epoch's end of the last trial to start to the
last epoch's end of the first to end); `overhead_core_share` is the driver's and Ray's over the window's length:
the share of one core the service takes from its trials.

Writes benchmarks/results/pace-under-ray-<device>.json, each shape's measurement under --label (e.g. "before",
"after"; the latest label is the shape's headline), and the commands' logs under --work.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_quality import TUNE, device_name, real_faces  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
RAY_SCRIPTS = {"dashboard/agent.py": "ray dashboard agent", "runtime_env/agent/main.py": "ray runtime_env agent",
               "log_monitor.py": "ray log monitor", "dashboard/dashboard.py": "ray dashboard",
               "autoscaler/_private/monitor.py": "ray monitor"}
RAY_TITLES = {"IDLE": "ray idle worker", "DashboardAgent": "ray dashboard agent",
              "RuntimeEnvAgent": "ray runtime_env agent"}


class Sampler(threading.Thread):
    """Every `interval` seconds, the counters (user seconds, system seconds, minor page faults) of each process
    under the given roots, with its parent, command line and niceness: {pid: (ppid, cmdline, [(time, counters),
    ...], nice)}, and of each of its threads, by name."""

    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval, self.roots, self.seen = interval, set(), {}
        self.threads: dict[int, dict[int, tuple[str, list]]] = {}  # pid -> thread id -> (name, samples)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        now, table = time.time(), {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                _, ppid, counters, nice = read_stat(entry / "stat")
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            table[int(entry.name)] = (ppid, cmd, counters, nice)
        under = set(self.roots)
        grew = True
        while grew:  # every descendant of a root
            more = {pid for pid, (ppid, *_) in table.items() if ppid in under} - under
            under |= more
            grew = bool(more)
        for pid in under & table.keys():
            ppid, cmd, cpu, nice = table[pid]
            _, last, samples, _ = self.seen.get(pid, (0, "", [], 0))
            samples.append((now, cpu))
            # the latest command line (Ray's workers retitle themselves), but not the empty one of a process ending
            self.seen[pid] = (ppid, cmd or last, samples, nice)
            for task in Path(f"/proc/{pid}/task").glob("*"):  # its threads, by name: compute, or Ray's own
                try:
                    name, _, counters, _ = read_stat(task / "stat")
                except OSError:
                    continue
                self.threads.setdefault(pid, {}).setdefault(int(task.name), (name, []))[1].append((now, counters))

    def cpu_by_role(self, t0: float, t1: float, trainer_roots: set[int]) -> tuple[dict[str, dict], dict[str, int]]:
        """User and system CPU seconds and minor page faults over [t0, t1] by role (`role`), and each role's
        niceness; processes that started within the window count whole."""
        roles: dict[str, tuple[float, float, int]] = {}
        niceness: dict[str, int] = {}
        for pid, (ppid, cmd, samples, nice) in self.seen.items():
            used = counted_between(samples, t0, t1)
            if used is None:
                continue
            name = role(pid, ppid, cmd, self.seen, trainer_roots)
            user, system, faults = roles.get(name, (0.0, 0.0, 0))
            roles[name] = (user + used[0], system + used[1], faults + used[2])
            niceness[name] = nice
        ordered = sorted(roles.items(), key=lambda kv: -kv[1][0] - kv[1][1])
        return ({k: {"user_s": round(u, 1), "system_s": round(s, 1), "minor_faults": f} for k, (u, s, f) in ordered},
                niceness)

    def trial_threads(self, t0: float, t1: float, trainer_roots: set[int]) -> dict[str, float]:
        """CPU seconds over [t0, t1] of the trial processes' threads, summed by thread name."""
        names: dict[str, float] = {}
        for pid, threads in self.threads.items():
            ppid, cmd, _, _ = self.seen[pid]
            if not role(pid, ppid, cmd, self.seen, trainer_roots).startswith("trial"):
                continue
            for name, samples in threads.values():
                user, system, _ = counted_between(samples, t0, t1) or (0.0, 0.0, 0)
                names[name] = names.get(name, 0.0) + user + system
        return {k: round(v, 1) for k, v in sorted(names.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def read_stat(path: Path) -> tuple[str, int, tuple[float, float, int], int]:
    """A process's or thread's /proc stat: (its name, its parent, (user seconds, system seconds, minor page
    faults), its niceness)."""
    name, _, rest = path.read_text().partition("(")[2].rpartition(")")  # the name may hold spaces and brackets
    fields = rest.split()
    return name, int(fields[1]), (int(fields[11]) / TICK, int(fields[12]) / TICK, int(fields[7])), int(fields[16])


def counted_between(samples: list[tuple[float, tuple]], t0: float, t1: float) -> tuple | None:
    """What cumulative counters (time, (counter, ...)) grew by over [t0, t1]: all of it for a process or thread
    that started within the window; None for one that started after it."""
    before = [c for t, c in samples if t <= t0]
    inside = [c for t, c in samples if t <= t1]
    if not inside:
        return None
    return tuple(b - a for a, b in zip(before[-1] if before else (0,) * len(inside[-1]), inside[-1], strict=True))


def role(pid: int, ppid: int, cmd: str, seen: dict, trainer_roots: set[int]) -> str:
    """What a process is: the driver, a trial, a trial's loader worker, or one of Ray's own."""
    if pid in trainer_roots:
        return "trial (tune train)"
    parent = seen.get(ppid, (0, "", [], 0))[1]
    if cmd.startswith("ray::"):  # Ray's workers and agents retitle themselves "ray::WHAT"
        what = cmd.split()[0].removeprefix("ray::")
        if what in RAY_TITLES:
            return RAY_TITLES[what]
        return "loader worker" if parent == cmd else "trial"
    if ppid in trainer_roots and cmd == parent:
        return "loader worker"
    if " -m tune run" in cmd or cmd.endswith("tune run"):
        return "driver (tune run)"
    program = " ".join(cmd.split()[:3])  # the executable and its script, not the arguments (the raylet's name
    for script, name in RAY_SCRIPTS.items():  # the agents' scripts in its own)
        if script in program:
            return name
    first = Path(cmd.split()[0]).name if cmd else "(exited)"
    return f"ray {first}" if first in ("gcs_server", "raylet") else first


def study_file(work: Path, persons: int, epochs: int, trials: int, cpus: int) -> Path:
    study = yaml.safe_load((ROOT / "search_spaces" / "cpu.yaml").read_text())
    study.update(name="pace", space={"train.seed": {"choice": list(range(trials + 1))}},
                 scheduler={"name": "fifo"})
    study["data"]["max_persons"] = persons
    study["train"]["epochs"] = epochs
    study["search"] = {"algorithm": "random", "num_samples": trials, "max_concurrent": trials}
    study["resources"] = {"cpus_per_trial": cpus}
    path = work / f"pace-{trials}x{cpus}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def epochs_of(uri: str, experiment: str) -> list[dict]:
    """Each run's epochs in `experiment`: [{"epoch", "at" (s), "epoch_time_s", "train_s", ...}, ...] per run."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    runs = []
    for run in client.search_runs([found.experiment_id]) if found else []:
        history = client.get_metric_history(run.info.run_id, "epoch_time_s")
        if not history:
            continue
        rows = {m.step: {"epoch": m.step, "at": m.timestamp / 1000, "epoch_time_s": m.value} for m in history}
        for key in ("train_s", "loader_wait_s", "val_s"):
            for m in client.get_metric_history(run.info.run_id, key):
                rows[m.step][key] = m.value
        runs.append([rows[k] for k in sorted(rows)])
    return runs


def side(name: str, commands: list[list[str]], work: Path, env: dict, uri: str, experiment: str,
         interval: float, trials: int, trainer: bool) -> dict:
    """Run `commands` at once under the sampler; the epochs of their `trials` runs from MLflow and the CPU of
    every process (trainer: each command is a trial itself, `tune train`)."""
    sampler = Sampler(interval)
    logs = [open(work / f"{name}-{i}.log", "w") for i in range(len(commands))]  # noqa: SIM115
    started = time.time()
    procs = [subprocess.Popen(c, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
             for c, log in zip(commands, logs, strict=True)]
    sampler.roots = {p.pid for p in procs}
    sampler.start()
    codes = [p.wait() for p in procs]
    sampler.done.set()
    sampler.join()
    for log in logs:
        log.close()
    if any(codes):
        raise SystemExit(f"{name} failed ({codes}): see {work}/{name}-*.log")
    runs = epochs_of(uri, experiment)
    if len(runs) != trials or any(len(r) < 2 for r in runs):
        raise SystemExit(f"{name}: expected {trials} runs of 2 epochs or more in MLflow experiment {experiment}")
    # the window where every trial trains its epochs 2 on: from the last first-epoch end to the first last-epoch end
    t0, t1 = max(r[0]["at"] for r in runs), min(r[-1]["at"] for r in runs)
    steady = [e for r in runs for e in r[1:]]
    walls = [b["at"] - a["at"] for r in runs for a, b in itertools.pairwise(r)]
    roots = {p.pid for p in procs} if trainer else set()
    counted, niceness = sampler.cpu_by_role(t0, t1, roots)
    cpu = {k: round(v["user_s"] + v["system_s"], 1) for k, v in counted.items()}
    window = max(t1 - t0, 1e-9)
    overhead = sum(v for k, v in cpu.items() if k.startswith(("driver", "ray")))
    return {"wall_s": round(time.time() - started, 1), "trials": len(runs),
            "epoch_s": [[round(e["epoch_time_s"], 1) for e in r] for r in runs],
            "median_epoch_s": round(statistics.median(e["epoch_time_s"] for e in steady), 1),
            "median_wall_per_epoch_s": round(statistics.median(walls), 1),
            "stages_median_s": {k: round(statistics.median(e[k] for e in steady), 2)
                                for k in ("train_s", "loader_wait_s", "val_s") if all(k in e for e in steady)},
            "window_s": round(window, 1), "cpu_s": cpu, "cpu_detail": counted,
            "cpu_s_per_window_s": {k: round(v / window, 3) for k, v in cpu.items()}, "niceness": niceness,
            "trial_threads_cpu_s": sampler.trial_threads(t0, t1, roots),
            "overhead_core_share": round(overhead / window, 3)}


def shape(which: str, data: Path, persons: int, epochs: int, work: Path, interval: float) -> dict:
    cpus = os.cpu_count() or 1
    trials, per_trial = (1, cpus) if which == "every-cpu" else (cpus, 1)
    folder = work / which
    folder.mkdir(parents=True, exist_ok=True)
    study = study_file(folder, persons, epochs, trials, per_trial)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNE_CACHE_DIR": str(work / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)
    print(f"{which}: tune train, {trials} at once on {per_trial} CPU(s) each", flush=True)
    train = side("train", [TUNE + ["train", str(study), "--data", str(data / "train"), "--cpus", str(per_trial),
                                   "--out", str(folder / f"export-{i}"), "--experiment", "pace-train",
                                   "--tracking-uri", uri, "--set", f"train.seed={i}"] for i in range(trials)],
                 folder, env, uri, "pace-train", interval, trials, trainer=True)
    print(json.dumps(train), flush=True)
    print(f"{which}: tune run, {trials} trial(s) of {per_trial} CPU(s)", flush=True)
    service = side("service", [TUNE + ["run", str(study), "--data", str(data / "train"), "--name", "pace",
                                       "--tracking-uri", uri]], folder, env, uri, "pace", interval, trials,
                   trainer=False)
    print(json.dumps(service), flush=True)
    return {"trials": trials, "cpus_per_trial": per_trial, "tune_train": train, "service": service,
            "epoch_ratio": round(service["median_epoch_s"] / train["median_epoch_s"], 3),
            "wall_per_epoch_ratio": round(service["median_wall_per_epoch_s"] / train["median_wall_per_epoch_s"], 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=["both", "every-cpu", "per-cpu"], default="both")
    p.add_argument("--label", default="after", help="the measurement's name in the results (before, after, ...)")
    p.add_argument("--persons", type=int, default=500, help="data.max_persons (default 500)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--interval", type=float, default=2.0, help="seconds between the sampler's reads of /proc")
    p.add_argument("--data", default="/tmp/utkmask", help="where make_utkmask.py's data set is (made if missing)")
    p.add_argument("--work", help="working folder (default /tmp/pace-under-ray-STAMP)")
    args = p.parse_args()
    data = real_faces(Path(args.data))
    work = Path(args.work or f"/tmp/pace-under-ray-{time.strftime('%Y%m%d-%H%M%S')}")
    results_file = ROOT / "benchmarks" / "results" / f"pace-under-ray-{device_name()}.json"
    out = json.loads(results_file.read_text()) if results_file.is_file() else {}
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    out.update(device=device_name(), cpus=os.cpu_count(),
               config=f"search_spaces/cpu.yaml's fixed values, {args.persons} persons, {args.epochs} epochs")
    for which in ("every-cpu", "per-cpu"):
        if args.shape in ("both", which):
            measured = shape(which, data, args.persons, args.epochs, work, args.interval)
            measured.update(commit=commit, date=time.strftime("%Y-%m-%d"))
            entry = out.setdefault("shapes", {}).setdefault(which, {})
            entry.setdefault("measurements", {})[args.label] = measured
            entry.update(label=args.label, epoch_ratio=measured["epoch_ratio"],
                         overhead_core_share=measured["service"]["overhead_core_share"])
            results_file.write_text(json.dumps(out, indent=1) + "\n")
            print(f"{which}: epoch_ratio {measured['epoch_ratio']}, the driver and Ray "
                  f"{measured['service']['overhead_core_share']:.1%} of a core; {results_file}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The study timed by a budget (`make test` runs this file alone, after the rest: see conftest.py)."""
from __future__ import annotations

import json
import re
import time

import pytest
import yaml

from tests.test_study import here, runs_of, study_file

# A study timed by a budget plans from the pace it measures, so it must run at that pace: make test runs these
# alone, after the rest (under the suite's load, Ray took 41-95 s to start a trial, and its pace swung with it)
pytestmark = [pytest.mark.slow, pytest.mark.budget]


def test_time_budget_plans_finished_schedules_ends_within_it_and_cuts_a_trial_far_slower_than_planned(
        demo_data, tmp_path):
    """One study proves both ends of the plan (the budget studies run alone: each costs its budget).

    The fixed values' epoch is made slow on purpose (96 px on each CPU's share): the plan gives trials far fewer
    epochs than train.epochs, the searcher starts no trial that could not end, every trial at the planned pace
    ends its schedule, the study ends within its budget, and the export is a trial whose schedule ran to its end.
    The space's other size, 1024 px, has 114 times the pixels: the plan never measured it, its first epoch cannot
    end within the budget, so it cannot shorten itself to fit and the study cuts it at the deadline, says so, and
    never exports it. Seed 8 draws 1024 for the trial beside the fixed values' (and 96 for the next four): the
    slow trial holds one CPU to the end while the planned pace holds on the other."""
    path = study_file(tmp_path, epochs=500, samples=200, lrs="[0.003, 0.03]", seed=8)
    path.write_text(path.read_text().replace("space:\n", "space:\n  model.image_size: {choice: [96, 1024]}\n"))
    started = time.monotonic()
    # 60 s: on an idle slow 2-core host the checks, Ray's start and the stores' tables take about 20 s after the
    # imports (in this process there are none to count), and a 100-s budget with its imports (about 16 s) finished
    # one trial of 9 epochs
    printed = here(tmp_path, "run", str(path), "--data", str(demo_data), "--time-budget", "60s",
                   "--set", "model.image_size=96")
    took = time.monotonic() - started
    pace, left, planned = re.search(r"plan: ([0-9.]+) s an epoch .* ([0-9]+) s left: trials of (\d+) epochs",
                                    printed).groups()
    planned = int(planned)  # the plan's, from the pace it measured (train.epochs, 500, does not fit)
    assert 1 <= planned <= float(left) / max(float(pace) - 0.05, 0.01) < 500, (pace, left, planned)
    assert took < 60 + 20, took  # + Ray's shutdown
    assert "within 1m00s" in printed and "no more trials: a trial takes about" in printed
    assert "cut by the time budget (not exported)" in printed, printed
    client, parent, children = runs_of(tmp_path, "it")
    assert 2 <= len(children) < 200
    outcomes = {c.data.params["model.image_size"]: set() for c in children}
    for child in children:
        outcomes[child.data.params["model.image_size"]].add(child.data.tags["tune.outcome"])
    assert outcomes["1024"] == {"cut"} and {c.info.status for c in children} == {"FINISHED"}
    assert outcomes["96"] <= {"finished", "stopped_early"} and "finished" in outcomes["96"]  # every schedule ended
    import optuna

    trials = optuna.load_study(study_name="it", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}").trials
    assert "RUNNING" not in {t.state.name for t in trials}  # the cut trial PRUNED: a --resume has no round to finish
    assert client.get_run(parent.info.run_id).data.params["plan.epochs"] == str(planned)
    best = client.get_run(parent.info.run_id).data.tags["tune.best_trial_id"]
    assert next(c for c in children if c.data.tags["ray.trial_id"] == best).data.tags["tune.outcome"] == "finished"
    # anytime performance on the parent run: the best so far against seconds, rising, and its plot
    history = client.get_metric_history(parent.info.run_id, "best_so_far_val_f1")
    assert [m.value for m in history] == sorted(m.value for m in history) and history[-1].step < 200
    assert "anytime.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    here(tmp_path, "export", "it", "--out", str(tmp_path / "export"))
    metrics = json.loads((tmp_path / "export" / "metrics.json").read_text())
    config = yaml.safe_load((tmp_path / "export" / "config.yaml").read_text())
    trial_folder = next((tmp_path / "mlruns" / "ray" / "it").glob(f"*{metrics['ray_trial_id']}*"))
    rows = [json.loads(line) for line in (trial_folder / "result.json").read_text().splitlines()]
    assert rows[-1]["epoch"] == rows[-1]["planned_epochs"]  # its schedule ran out
    kept = next(r for r in rows if r["epoch"] == metrics["epoch"])
    assert config["train"]["epochs"] == kept["planned_epochs"]  # the export's config: its schedule then

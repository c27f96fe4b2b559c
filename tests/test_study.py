"""Real studies on the demo data: Ray Tune + Optuna + ASHA, the MLflow store, resume, export and reload."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

STUDY = """
name: it
task: all
model: {{backbone: test_resnet, image_size: 32}}
train: {{epochs: {epochs}, batch_size: 16, num_workers: 0, average_last: {average}}}
space:
  optimizer:
    choice:
      sgd: {{lr: {{choice: {lrs}}}, momentum: {{choice: [0.0]}}}}
      adamw: {{weight_decay: {{loguniform: [1.0e-5, 1.0e-3]}}}}
search: {{algorithm: random, seed: {seed}, num_samples: {samples}, max_concurrent: {concurrent}}}
scheduler: {{name: {scheduler}, grace_period: 1, reduction_factor: 2}}
"""


def tune_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tune", *args]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "RAY_DEDUP_LOGS": "0"}


def run(cwd: Path, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    done = subprocess.run(tune_cmd(*args), cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def here(cwd: Path, *args: str, code: int = 0) -> str:
    """`tune ARGS` in this process, in `cwd`: no interpreter and no import to pay for again (a study too: its Ray
    starts and stops with the command, as in its own process); returns what it printed. Exit code `code` expected.
    A study whose terminal output is checked for Ray's noise runs in its own process (`run`): only there is
    everything written to the terminal seen."""
    import contextlib
    import io

    import torch

    from tune.cli import main

    printed, threads, before, environment = io.StringIO(), torch.get_num_threads(), os.getcwd(), dict(os.environ)
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(printed):
            returned = main(list(args))
    finally:  # what the command set for itself, as its own process would have kept it to itself
        os.chdir(before)
        torch.set_num_threads(threads)  # tune train sets its own
        os.environ.clear()
        os.environ.update(environment)  # a study sets MLflow's retries and Ray's output settings
    assert returned == code, printed.getvalue()[-3000:]
    return printed.getvalue()


def study_file(tmp_path: Path, **values) -> Path:
    defaults = dict(epochs=4, seed=0, samples=6, concurrent=2, scheduler="asha", lrs="[0.003, 0.03, 1.0e+12]",
                    average="null")
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(**(defaults | values)))
    return path


def runs_of(tmp_path: Path, study: str) -> tuple[MlflowClient, object, list]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tune.role") == "study"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return client, parents[0], children


def finished_trials(tmp_path: Path, study: str) -> set[str]:
    """Ray trial ids of the trials the MLflow store marks finished."""
    store = tmp_path / "mlruns" / "mlflow.db"
    if not any((tmp_path / "mlruns" / "ray" / study).glob("*/checkpoint_*")):
        return set()  # not before a trial has reported: the driver may still be creating the store's tables
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return set()
    runs = client.search_runs([experiment.experiment_id], "tags.`tune.outcome` = 'finished'")
    return {r.data.tags["ray.trial_id"] for r in runs}


def test_study_tracks_stops_early_fails_alone_exports_and_reports(demo_data, tmp_path, capsys, monkeypatch):
    done = run(tmp_path, "run", str(study_file(tmp_path, average=2)), "--data", str(demo_data))
    client, parent, children = runs_of(tmp_path, "it")
    # the terminal shows one line per trial event and a progress line per ended trial, none of Ray's own output
    printed = done.stdout
    assert "#1 started" in printed and "#6 started" in printed and "epoch 1/4  val_f1 " in printed
    assert "stopped early after epoch" in printed and "finished after epoch 4" in printed
    # lr 1e12: the first step's loss is not finite (inf, or nan where every weight was decayed)
    assert re.search(r"failed after epoch 0: FloatingPointError: loss became (nan|inf)", printed), printed
    assert "-- 6/6 trials, best val_f1 " in printed
    assert "lost its process" not in printed and "restarted" not in printed  # the loss is the trial's own: no retry
    for noise in ("Checkpoint successfully created", "Trial status", "\u256d", "Traceback", "Token authentication"):
        assert noise not in printed + done.stderr
    assert " ray.tune." in (tmp_path / "mlruns" / "logs" / "it.log").read_text()  # Ray's records went here
    assert len(children) == 6
    # each trial's run is named as the live view numbers it, with what it tries: #3 lr=0.0312 name=sgd
    assert sorted(int(c.info.run_name.split()[0].removeprefix("#")) for c in children) == [1, 2, 3, 4, 5, 6]
    assert all(re.fullmatch(r"#\d \S+=\S+( \S+=\S+)*", c.info.run_name) for c in children), [
        c.info.run_name for c in children]
    assert all(c.data.metrics["best_val_f1"] == round(c.data.metrics["best_val_f1"], 4)
               for c in children if "best_val_f1" in c.data.metrics)  # four decimals, not eight
    outcomes = [c.data.tags["tune.outcome"] for c in children]
    assert "stopped_early" in outcomes and "finished" in outcomes  # ASHA stopped some, not all
    assert "failed" in outcomes  # lr 1e12 makes the loss non-finite: that trial fails, the study goes on
    assert {c.info.status for c in children if c.data.tags["tune.outcome"] == "failed"} == {"FAILED"}
    finished = next(c for c in children if c.data.tags["tune.outcome"] == "finished")
    history = client.get_metric_history(finished.info.run_id, "val_f1")
    assert [m.step for m in history] == [1, 2, 3, 4]
    # train.average_last 2: the mean of epochs 3 and 4 was scored, and is the model where it scored better
    ended = finished.data.metrics
    assert ended["val_f1"] == max(ended["average_val_f1"], ended["last_epoch_val_f1"])
    assert ended["averaged_epochs"] == (2 if ended["average_val_f1"] > ended["last_epoch_val_f1"] else 0)
    assert "(the mean of its last" in printed
    assert finished.data.params["optimizer.name"] in ("sgd", "adamw") and finished.data.params["task"] == "all"
    artifacts = {a.path for a in client.list_artifacts(finished.info.run_id)}
    assert {"confusion_matrix.png", "per_class_report.json", "config.json"} <= artifacts
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"study.yaml", "search_space.txt", "trials.json"} <= parent_artifacts
    assert parent.data.tags["tune.best_trial_id"]
    # Optuna hears a trial ASHA stopped as PRUNED (ranked below the finished ones), not as a finished score
    import optuna

    states = {t.number + 1: t.state.name for t in optuna.load_study(
        study_name="it", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}").trials}
    by_outcome = {"finished": "COMPLETE", "stopped_early": "PRUNED", "failed": "FAIL"}
    assert sorted(states.values()) == sorted(by_outcome[o] for o in outcomes)

    listed = run(tmp_path, "ls", str(tmp_path / "mlruns" / "ray" / "it"))  # Ray's own subcommand, through ours
    assert "trial_id" in listed.stdout

    here(tmp_path, "export", "it")
    out = tmp_path / "exports" / "it"
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.yaml", "metrics.json", "classes.json"}
    reported = json.loads((out / "metrics.json").read_text())
    best = max(c.data.metrics.get("best_val_f1", -1) for c in children)
    assert reported["val_f1"] == pytest.approx(best, abs=5e-5)  # the best epoch of all trials (as the runs show it)
    from tune.export import evaluate_export

    assert evaluate_export(out)["val_f1"] == pytest.approx(reported["val_f1"], abs=1e-9)
    # tune train on the export's config (same data and seed, one CPU like the trial) gives that epoch back
    here(tmp_path, "train", str(out / "config.yaml"), "--out", str(tmp_path / "again"), "--cpus", "1")
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    history = client.get_metric_history(again["mlflow_run_id"], "val_f1")
    assert [m.value for m in history if m.step == reported["epoch"]] == [reported["val_f1"]]
    assert client.get_registered_model("it").latest_versions

    # an ensemble of the study's trials: at least as good on the validation persons as the best trial alone
    ensembled = here(tmp_path, "export", "it", "--ensemble")
    assert "exported an ensemble of" in ensembled
    manifest = json.loads((tmp_path / "exports" / "it-ensemble" / "ensemble.json").read_text())
    assert manifest["members"] and sum(m["weight"] for m in manifest["members"]) == pytest.approx(1.0)
    assert manifest["val_f1"] >= manifest["best_member_val_f1"]
    from tune.predict import evaluate

    ensemble_f1 = evaluate([str(tmp_path / "exports" / "it-ensemble")], str(demo_data))["f1"]
    assert ensemble_f1 >= evaluate([str(out)], str(demo_data))["f1"]
    assert ensemble_f1 == pytest.approx(manifest["val_f1"], abs=0.02)
    assert client.get_run(parent.info.run_id).data.metrics["ensemble_val_f1"] == pytest.approx(manifest["val_f1"])
    eval_dir = tmp_path / "eval"  # tune predict takes the ensemble export as one model
    (eval_dir / "images").mkdir(parents=True)
    photos = [p for p in sorted(demo_data.glob("images/*/*.jpg")) if not p.name.startswith(".")][:10]
    for i, photo in enumerate(photos):
        (eval_dir / "images" / f"{i}.jpg").write_bytes(photo.read_bytes())
    (eval_dir / "info.csv").write_text("ImageID,ans\n" + "".join(f"{i}.jpg,0\n" for i in range(len(photos))))
    here(tmp_path, "predict", "--model", str(tmp_path / "exports" / "it-ensemble"), "--data", str(eval_dir),
        "--out", str(tmp_path / "submission.csv"))
    answers = (tmp_path / "submission.csv").read_text().splitlines()[1:]
    assert len(answers) == 10 and all(0 <= int(line.split(",")[1]) < 18 for line in answers)

    from tune.cli import main

    capsys.readouterr()
    assert main(["report", "it", "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"]) == 0
    printed = capsys.readouterr().out
    assert "best_val_f1" in printed and "optimizer.name" in printed
    assert parent.data.tags["tune.best_trial_id"] in printed
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"learning_curves.png", "param_importance.json", "best_trials.json", "report.md"} <= logged
    table = artifact_json(client, parent.info.run_id, "best_trials.json", tmp_path)
    assert table["columns"][:4] == ["trial_id", "outcome", "best_val_f1", "best_epoch"]
    assert "optimizer.name" in table["columns"]
    assert table["data"][0][2] == pytest.approx(best, abs=5e-5)  # ranked: the best trial first
    assert len(table["data"]) == sum("best_val_f1" in c.data.metrics for c in children)
    importance = artifact_json(client, parent.info.run_id, "param_importance.json", tmp_path)
    scored = [c for c in children if c.data.tags["tune.outcome"] in ("finished", "stopped_early")]
    assert importance["trials"] == len(scored) >= 2
    if len({c.data.params["optimizer.name"] for c in scored}) > 1:  # the one param every scored trial sampled
        assert set(importance["importances"]) == {"optimizer.name"} and importance["note"] is None
        assert importance["importances"]["optimizer.name"] == pytest.approx(1.0)
    else:
        assert importance["importances"] == {} and "takes different values" in importance["note"]
    metrics = client.get_run(parent.info.run_id).data.metrics
    assert all(f"importance.{k}" in metrics for k in importance["importances"])

    # the registered model is the export's, and MLflow loads it from the requirements it names
    import mlflow
    import numpy as np
    import torch

    from tune.export import load_export

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    version = client.get_registered_model("it").latest_versions[0].version
    requirements = Path(mlflow.artifacts.download_artifacts(f"models:/it/{version}/requirements.txt")).read_text()
    assert {line.split("==")[0] for line in requirements.split()} == {"mlflow", "torch", "cloudpickle"}
    batch = np.random.default_rng(0).random((2, 3, 32, 32), np.float32)
    served = mlflow.pyfunc.load_model(f"models:/it/{version}").predict(batch)
    assert np.allclose(served, load_export(out)[1](torch.from_numpy(batch)).detach().numpy(), atol=1e-5)


def artifact_json(client: MlflowClient, run_id: str, name: str, tmp_path: Path):
    return json.loads(Path(client.download_artifacts(run_id, name, str(tmp_path))).read_text())


def test_finished_study_grows_with_trials_chosen_knowing_the_earlier_ones(demo_data, tmp_path):
    import optuna

    from tune import space
    from tune.config import load_study

    path = tmp_path / "grow.yaml"
    path.write_text("""
task: all
model: {backbone: test_resnet, image_size: 32}
train: {epochs: 1, batch_size: 16, num_workers: 0}
optimizer: {name: adamw}
space: {optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}}
search: {algorithm: tpe, seed: 3, num_samples: 2, max_concurrent: 1, startup_trials: 1}  # a process serves a round
scheduler: {name: fifo}
""")
    here(tmp_path, "run", str(path), "--data", str(demo_data))
    grown = here(tmp_path, "run", str(path), "--data", str(demo_data), "--resume", "--num-samples", "4")
    assert "has 2 trials: 2 more" in grown and "#3 started" in grown
    client, parent, children = runs_of(tmp_path, "grow")
    assert len(children) == 4 and parent.info.status == "FINISHED"
    trials = artifact_json(client, parent.info.run_id, "trials.json", tmp_path)
    assert len(trials["data"]) == 4  # both rounds, each trial with its score
    scores = [row[trials["columns"].index("best_val_f1")] for row in trials["data"]]
    assert None not in scores and parent.data.metrics["best_val_f1"] == pytest.approx(max(scores))

    storage = f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    old, new = [], []
    for t in optuna.load_study(study_name="grow", storage=storage).trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        (old if t.number < 2 else new).append(t)
    # the grown round's first trial is what TPE proposes given the first two, not what it proposes alone
    nodes = space.parse_space(load_study(path).space, load_study(path).trial_base(), str(path))

    def proposal(history: list) -> float:
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=3 + 2,
                                                                                             n_startup_trials=1))
        study.add_trials(history)
        return space.SpaceSampler(nodes)(study.ask())["optimizer.lr"]

    assert new[0].params["optimizer.lr"] == pytest.approx(proposal(old))
    assert new[0].params["optimizer.lr"] != pytest.approx(proposal([]))
    assert "has all its 4 trials" in here(tmp_path, "run", str(path), "--data", str(demo_data), "--resume")
    again = artifact_json(client, parent.info.run_id, "trials.json", tmp_path)
    assert sorted(map(str, again["data"])) == sorted(map(str, trials["data"]))  # a resume that adds nothing keeps it

    import shutil

    shutil.rmtree(tmp_path / "mlruns" / "ray" / "grow")  # a new study of that name starts from nothing
    assert "#1 started" in here(tmp_path, "run", str(path), "--data", str(demo_data), "--num-samples", "1")
    assert len(optuna.load_study(study_name="grow", storage=storage).trials) == 1


def ray_results(tmp_path: Path, study: str) -> list[dict]:
    """Every result Ray recorded for the study's (one) trial, in order: its result.json."""
    files = list((tmp_path / "mlruns" / "ray" / study).glob("*/result.json"))
    if not files:
        return []
    assert len(files) == 1, files
    return [json.loads(line) for line in files[0].read_text().splitlines() if line.strip()]


def test_trial_whose_process_is_killed_resumes_from_its_checkpoint(demo_data, tmp_path, capsys):
    path = tmp_path / "kill.yaml"
    path.write_text("""
task: all
model: {backbone: test_resnet, image_size: 48}
train: {epochs: 4, batch_size: 16, num_workers: 0}
optimizer: {lr: 0.001}
space: {optimizer.lr: {choice: [0.001]}}
search: {algorithm: random, num_samples: 1, max_concurrent: 1}
scheduler: {name: fifo}
""")
    out = tmp_path / "out.txt"
    with out.open("w") as stdout:
        proc = subprocess.Popen(tune_cmd("run", str(path), "--data", str(demo_data)), cwd=tmp_path, env=env(),
                                stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and not ray_results(tmp_path, "kill"):
            time.sleep(0.1)
        before = ray_results(tmp_path, "kill")
        assert before and proc.poll() is None, "the study ended before its trial could be killed"
        victim = before[-1]["pid"]  # the study's own trial process (Ray records it with each result)
        os.kill(victim, signal.SIGKILL)  # it dies mid-study, as if killed for memory
        assert proc.wait(timeout=300) == 0
    results = ray_results(tmp_path, "kill")
    epochs = [r["epoch"] for r in results]
    killed = [r["epoch"] for r in results if r["pid"] == victim]
    # the retry went on from its last checkpoint in a new process: no second epoch 1, every planned epoch once
    assert epochs == [1, 2, 3, 4] and 1 <= len(killed) < 4 and results[-1]["pid"] != victim, results
    assert [r["training_iteration"] for r in results] == [1, 2, 3, 4]
    printed = out.read_text()
    assert "lost its process" in printed and f"restarted after epoch {len(killed)}" in printed
    assert "finished after epoch 4" in printed and "(raylet)" not in printed  # Ray's message went to the log
    client, parent, children = runs_of(tmp_path, "kill")
    (child,) = children  # one MLflow run, every epoch once
    assert child.data.tags["tune.outcome"] == "finished"
    history = client.get_metric_history(child.info.run_id, "val_f1")
    assert [m.step for m in history] == [1, 2, 3, 4]
    # and the epochs after the kill are the uninterrupted run's (batches and augmentations come from (seed, epoch))
    import torch

    from tune.cli import main

    threads = torch.get_num_threads()
    try:
        assert main(["train", str(path), "--data", str(demo_data), "--cpus", "1", "--out", str(tmp_path / "whole"),
                     "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"]) == 0  # the study's store
    finally:
        torch.set_num_threads(threads)
    whole = [float(v) for v in re.findall(r"^epoch \d+/4: .*val_f1 ([0-9.]+)", capsys.readouterr().out, re.M)]
    assert len(whole) == 4 and [round(r["val_f1"], 4) for r in results] == whole, (results, whole)


def test_trials_cut_by_the_time_budget_are_never_exported(tmp_path, monkeypatch, capsys):
    from tune.outcomes import CUT_MARKER, best_checkpoints


    monkeypatch.chdir(tmp_path)
    for trial, value in (("trial_a", 0.5), ("trial_b", 0.9)):
        folder = tmp_path / "mlruns" / "ray" / "s" / trial / "checkpoint_000001"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({"val_f1": value, "epoch": 1}))
    (tmp_path / "mlruns" / "ray" / "s" / "trial_b" / CUT_MARKER).write_text("cut")
    assert [m["val_f1"] for _, m in best_checkpoints("s", "val_f1", "max")] == [0.5]
    (tmp_path / "mlruns" / "ray" / "s" / "trial_a" / CUT_MARKER).write_text("cut")
    from tune.cli import main

    capsys.readouterr()
    assert main(["export", "s"]) == 2 and "the time budget cut all its 2 trials" in capsys.readouterr().err


def test_time_budget_too_short_for_one_epoch_is_refused_before_training(demo_data, tmp_path, monkeypatch,
                                                                              capsys):
    path = study_file(tmp_path, epochs=4)
    from tune.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["run", str(path), "--data", str(demo_data), "--time-budget", "2s"]) == 2
    printed = capsys.readouterr()
    assert printed.err.count("\n") == 1 and "--time-budget" in printed.err
    assert "the time budget leaves" in printed.err and "give it at least" in printed.err
    assert not (tmp_path / "mlruns" / "ray" / "it").exists() and "started" not in printed.out


def test_a_new_study_runs_its_fixed_values_first(tmp_path, monkeypatch):
    from tune import space
    from tune.config import load_study
    from tune.search.searcher import searcher

    monkeypatch.chdir(tmp_path)
    path = study_file(tmp_path, lrs="[0.003, 0.001, 0.03]")
    path.write_text(path.read_text().replace("model: {", "optimizer: {name: sgd, lr: 0.001}\nmodel: {"))
    study = load_study(path)
    nodes = space.parse_space(study.space, study.trial_base(), "study.yaml")
    first = searcher(study, nodes).suggest("a")
    assert first["optimizer.name"] == "sgd" and first["optimizer.lr"] == 0.001  # the fixed values


def test_asha_never_stops_the_prior_early():
    from ray.tune.experiment import Trial

    from tune.search.searcher import PriorToTheEnd

    asha = PriorToTheEnd({"optimizer.name": "sgd", "optimizer.lr": 0.001}, time_attr="training_iteration",
                         metric="val_f1", mode="max", max_t=8, grace_period=1, reduction_factor=2)
    good, prior, other = (Trial("t", config={"optimizer.name": "sgd", "optimizer.lr": lr}, stub=True)
                          for lr in (0.01, 0.001, 0.02))
    for trial in (good, prior, other):
        asha.on_trial_add(None, trial)
    assert asha.on_trial_result(None, good, {"training_iteration": 1, "val_f1": 0.9}) == "CONTINUE"
    assert asha.on_trial_result(None, other, {"training_iteration": 1, "val_f1": 0.1}) == "STOP"  # ASHA's rule
    assert asha.on_trial_result(None, prior, {"training_iteration": 1, "val_f1": 0.1}) == "CONTINUE"  # the prior


def test_asha_stops_a_trial_within_a_budget_only_where_one_in_its_place_could_train_as_long(tmp_path, monkeypatch):
    """The real searcher and scheduler, behind Ray's own wrappers as a Tuner puts them: with 1,000 s left, a new
    trial of 8 epochs fits at 50 s an epoch (ASHA's stop is kept), not at 200 s (the trial goes on)."""
    import types

    from ray.tune.experiment import Trial
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator

    from tune import space
    from tune.config import load_study
    from tune.search.searcher import scheduler, searcher

    monkeypatch.chdir(tmp_path)
    study = load_study(study_file(tmp_path, epochs=8))
    study.scheduler.grace_period, study.scheduler.reduction_factor = 1, 2
    nodes = space.parse_space(study.space, study.trial_base(), "study.yaml")
    search = searcher(study, nodes, 0, deadline=time.time() + 1000)
    said = []
    asha = scheduler(study, prior=None, say=said.append)
    asha.set_search_properties("val_f1", "max")  # as the Tuner does
    controller = types.SimpleNamespace(search_alg=SearchGenerator(ConcurrencyLimiter(search, max_concurrent=2)))
    trials = [Trial("t", config=search.suggest(name), stub=True) for name in "abcd"]
    for trial in trials:
        asha.on_trial_add(controller, trial)
    first = {"training_iteration": 1, "epoch": 1, "planned_epochs": 8}
    search.on_trial_result("a", first | {"val_f1": 0.9, "time_total_s": 50.0})
    assert asha.on_trial_result(controller, trials[0], first | {"val_f1": 0.9}) == "CONTINUE"
    assert asha.on_trial_result(controller, trials[1], first | {"val_f1": 0.1}) == "STOP"  # 19 epochs fit: stopped
    assert not said
    search.on_trial_result("c", first | {"val_f1": 0.05, "time_total_s": 200.0})  # the slowest pace: 200 s
    assert asha.on_trial_result(controller, trials[2], first | {"val_f1": 0.05}) == "CONTINUE"  # 4 fit, of 8
    assert len(said) == 1 and "would reach 4 of its 8 epochs" in said[0], said
    shortened = first | {"planned_epochs": 4}  # a trial re-planned to 4 epochs: a trial in its place is as long
    assert asha.on_trial_result(controller, trials[3], shortened | {"val_f1": 0.04}) == "STOP"


def test_searcher_plans_the_time_budget(tmp_path, monkeypatch):
    import optuna

    from tune import space
    from tune.config import load_study
    from tune.search.searcher import searcher

    monkeypatch.chdir(tmp_path)
    study = load_study(study_file(tmp_path, epochs=4, scheduler="fifo"))
    nodes = space.parse_space(study.space, study.trial_base(), "study.yaml")
    search = searcher(study, nodes, 0, deadline=time.time() + 110)
    assert search.suggest("a") and search.suggest("b")  # nothing measured yet: trials start
    search.on_trial_result("a", {"val_f1": 0.3, "epoch": 1, "time_total_s": 20.0, "training_iteration": 1})
    assert search.trial_seconds() == 4 * 20.0  # 80 s: fits in what is left (no plan: no start measured yet)
    assert search.suggest("c")
    search.on_trial_result("b", {"val_f1": 0.2, "epoch": 1, "time_total_s": 30.0, "training_iteration": 1})
    # a full trial (4 x 30 s) no longer fits in the 110 s left, 3 epochs do: a shorter trial starts instead
    shorter = search.suggest("d")
    assert shorter["train.epochs"] == 3 and "optimizer.name" in shorter
    search.on_trial_result("b", {"val_f1": 0.2, "epoch": 1, "time_total_s": 60.0, "training_iteration": 1})
    assert search.suggest("e") == "FINISHED" and "takes about 240 s" in search.refused  # not even half of it fits
    search.on_trial_complete("d", {"val_f1": 0.4, "epoch": 3, "time_total_s": 90.0, "training_iteration": 3})
    search.on_trial_complete("a", {"val_f1": 0.3, "epoch": 1, "time_total_s": 20.0, "training_iteration": 1})
    trials = optuna.load_study(study_name="it", storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}").trials
    assert trials[0].state.name == "PRUNED" and trials[0].intermediate_values == {1: 0.3}  # stopped before epoch 4
    assert trials[3].state.name == "COMPLETE" and trials[3].value == 0.4  # the shorter trial reached its last epoch


def test_searcher_starts_the_trial_the_plan_fitted_with_its_heads_warmup(tmp_path, monkeypatch):
    """An epoch of 214 s and a 10-s start do not fit 201 s at the full pace; with the head's warm-up's frozen steps
    (28 s less) they do: the plan gives the trial its epoch and the searcher starts it (it refused it once)."""
    from tune import space
    from tune.config import load_study
    from tune.plan import Pace, Plan, apply
    from tune.search.searcher import searcher

    monkeypatch.chdir(tmp_path)
    study = load_study(study_file(tmp_path, epochs=4, scheduler="fifo"))
    nodes = space.parse_space(study.space, study.trial_base(), "study.yaml")
    pace = Pace(epoch_s=214, start_s=10, cpus=2, head_warmup_saving_s=168, head_warmup=lambda epochs: epochs / 6)
    plan = Plan(epochs=1, concurrent=1, cpus_per_trial=2, grace_period=1, pace=pace, seconds=201)
    apply(plan, study)
    search = searcher(study, nodes, 0, deadline=time.time() + 201, plan=plan)
    assert search.trial_seconds() == pytest.approx(196) and search.suggest("a")


def epochs_logged(tmp_path: Path, study: str) -> int:
    """How many epochs of the study's trials MLflow holds so far."""
    if not (tmp_path / "mlruns" / "mlflow.db").is_file():
        return 0
    client, _, children = runs_of(tmp_path, study)
    return sum(len(client.get_metric_history(c.info.run_id, "val_f1")) for c in children)


def test_a_trial_run_that_ray_lost_with_its_driver_is_not_a_trial_of_the_study(tmp_path):
    from tests.test_report import write_study
    from tune import tracking
    from tune.search.tracker import LOST_RUNS, drop_lost_runs

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = write_study(client, tmp_path, "lost", [("restored", None, {}, [0.1]), ("earlier", "finished", {}, [0.2]),
                                                    ("lost", None, {}, [])])
    ids = {r.data.tags["ray.trial_id"]: r.info.run_id for r in tracking.trial_runs(client, parent)}
    client.set_terminated(ids["earlier"], "FINISHED")  # a trial of an earlier round: ended, not in the round
    assert drop_lost_runs(client, parent, {"restored"}) == [ids["lost"]]
    assert {r.data.tags["ray.trial_id"] for r in tracking.trial_runs(client, parent)} == {"restored", "earlier"}
    assert client.get_run(ids["lost"]).info.lifecycle_stage == "deleted"
    assert client.get_run(parent).data.tags[LOST_RUNS] == ids["lost"]
    assert drop_lost_runs(client, parent, {"restored"}) == []  # once


def test_study_interrupted_then_its_driver_killed_resumes_with_every_trial_once(demo_data, tmp_path, monkeypatch,
                                                                                 capsys):
    """Ctrl-C once a trial has finished; then the resumed round's driver killed (SIGKILL, its machine down with
    its local Ray) while that round runs; then --resume: every trial once, each epoch once, none run again."""
    path = study_file(tmp_path, epochs=3, samples=4, concurrent=1, scheduler="fifo", seed=1, lrs="[0.003, 0.03]")
    args = ["run", str(path), "--data", str(demo_data), "--name", "resumable"]

    def start(*extra: str, stdout=subprocess.DEVNULL) -> subprocess.Popen:
        return subprocess.Popen(tune_cmd(*args, *extra), cwd=tmp_path, env=env(), stdout=stdout,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def wait_until(condition, proc: subprocess.Popen, seconds: float = 300) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline and not condition() and proc.poll() is None:
            time.sleep(0.2)

    proc = start()
    wait_until(lambda: finished_trials(tmp_path, "resumable"), proc)
    assert proc.poll() is None, "the study ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)
    first = finished_trials(tmp_path, "resumable")
    assert 1 <= len(first) < 4

    from tune.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(args) == 2 and "exists" in capsys.readouterr().err  # a new run of the same name is refused

    logged = epochs_logged(tmp_path, "resumable")
    with (tmp_path / "resumed.txt").open("w") as out:
        proc = start("--resume", stdout=out)
        wait_until(lambda: epochs_logged(tmp_path, "resumable") > logged, proc)  # the restored round runs
        assert proc.poll() is None, "the resumed round ended before its driver could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert "study resumable: restoring its interrupted round (" in (tmp_path / "resumed.txt").read_text()
    ended = finished_trials(tmp_path, "resumable")
    started = {c.data.tags["ray.trial_id"] for c in runs_of(tmp_path, "resumable")[2]}
    assert len(ended) < 4, (first, logged, ended)  # killed while its round ran: trials still to finish or start

    resumed = here(tmp_path, *args, "--resume")
    restoring = "study resumable: restoring its interrupted round ("
    assert restoring in resumed and f"from {tmp_path / 'mlruns' / 'ray'}" in resumed, resumed
    client, parent, children = runs_of(tmp_path, "resumable")
    from tune.search.tracker import LOST_RUNS

    # the round's own trials went on; a trial Ray started after it last saved the round ran again as a new one
    lost = {client.get_run(r).data.tags["ray.trial_id"] for r in parent.data.tags.get(LOST_RUNS, "").split(",") if r}
    assert started - lost <= {c.data.tags["ray.trial_id"] for c in children}
    assert parent.info.status == "FINISHED"
    assert len(children) == 4 and {c.data.tags["tune.outcome"] for c in children} == {"finished"}
    assert len({c.data.tags["ray.trial_id"] for c in children}) == 4  # each trial once
    for child in children:  # each epoch once
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_f1")] == [1, 2, 3]
    trials = json.loads(Path(client.download_artifacts(parent.info.run_id, "trials.json", str(tmp_path))).read_text())
    assert len(trials["data"]) == 4 and "outcome" in trials["columns"]
    storage = tmp_path / "mlruns" / "ray" / "resumable"
    for trial_id in first:  # trials finished before the interruption were not run again
        (folder,) = storage.glob(f"*{trial_id}*")
        lines = (folder / "result.json").read_text().strip().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    import optuna

    from tune.search.optuna_store import ORPHANS

    optuna_study = optuna.load_study(study_name="resumable",
                                     storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    orphans = set(optuna_study.user_attrs.get(ORPHANS, []))
    trials = optuna_study.trials
    assert [t.state.name for t in trials if t.number not in orphans] == ["COMPLETE"] * 4  # what ran, once each
    assert all(trials[n].state.name == "FAIL" for n in orphans)  # proposed, never ran: closed

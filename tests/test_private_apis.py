"""The private parts of Ray and Optuna that tune/search/private.py uses: this fails loudly when an upgrade of
either takes one away, rather than a study misbehaving quietly."""
from __future__ import annotations

import logging

import optuna
from ray.tune.search.optuna import OptunaSearch

from tune.search import private


def test_raylet_messages_go_to_the_logger_and_ray_gets_its_printer_back(caplog):
    import ray._private.worker as ray_worker

    printed = ray_worker.print_to_stdstream
    assert callable(printed)
    with caplog.at_level(logging.WARNING, logger="raylet-test"), private.redirect_raylet_messages(
            logging.getLogger("raylet-test")):
        ray_worker.print_to_stdstream({"pid": 7, "lines": ["a worker died"]}, ignore_prefix=False)
    assert ray_worker.print_to_stdstream is printed
    assert "(7) a worker died" in caplog.text


def test_the_optuna_trial_behind_a_ray_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0.0, 1.0)}, metric="f1", mode="max",
                          storage=optuna.storages.RDBStorage(storage), study_name="s")
    search.suggest("a")
    search.suggest("b")
    search.on_trial_complete("b", {"f1": 0.5})
    first, second = private.optuna_trial(search, "a"), private.optuna_trial(search, "b")
    assert (first.number, first.state.name) == (0, "RUNNING")
    assert (second.number, second.state.name, second.value) == (1, "COMPLETE", 0.5)
    assert private.optuna_trial(search, "never") is None
    private.forget_trial(search, "a")
    assert private.optuna_trial(search, "a") is None
    assert optuna.load_study(study_name="s", storage=storage).trials[0].state.name == "RUNNING"  # Optuna not told


def test_a_lean_local_ray_leaves_out_both_monitors():
    from ray._private.parameter import RayParams

    assert RayParams().include_log_monitor is None and RayParams().no_monitor is False  # Ray's defaults
    with private.lean_local_ray():
        lean = RayParams(num_cpus=1)
    assert (lean.include_log_monitor, lean.no_monitor, lean.num_cpus) == (False, True, 1)
    assert RayParams().include_log_monitor is None  # put back


def test_ray_tunes_loop_waits_for_events_as_long_as_it_is_let(monkeypatch):
    import inspect

    from ray.air.execution._internal.actor_manager import RayActorManager
    from ray.tune.execution.tune_controller import TuneController

    assert "self._actor_manager.next(timeout=0.1)" in inspect.getsource(TuneController.step)  # the wait lengthened
    waits = []
    monkeypatch.setattr(RayActorManager, "next", lambda self, timeout=None: waits.append(timeout) or False)
    with private.patient_tune_loop(1.0):
        for timeout in (0.1, None, 5):
            RayActorManager.next(object(), timeout=timeout)
    RayActorManager.next(object(), timeout=0.1)
    assert waits == [1.0, None, 5, 0.1]  # an event still ends a wait at once: ray.wait returns on the first

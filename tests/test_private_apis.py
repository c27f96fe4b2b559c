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

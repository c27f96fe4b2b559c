"""ASHA's first rung chosen by measurement (tune/search/rungs.py), on a store written the way the tracker does."""
from __future__ import annotations

from mlflow import MlflowClient

from tests.test_report import write_study
from tune.search import rungs


def test_the_first_rung_is_the_earliest_epoch_from_which_scores_rank_as_the_final_ones():
    curves = [  # epoch 1 ranks the trials in reverse of their end; from epoch 2 on as at the end
        {1: 0.40, 2: 0.20, 3: 0.30, 4: 0.35},
        {1: 0.30, 2: 0.30, 3: 0.40, 4: 0.45},
        {1: 0.20, 2: 0.40, 3: 0.50, 4: 0.55},
        {1: 0.10, 2: 0.50, 3: 0.60, 4: 0.65},
    ]
    rho = rungs.rank_by_epoch(curves)
    assert rho == {1: -1.0, 2: 1.0, 3: 1.0}  # the last epoch is what is ranked against, not a rung
    assert rungs.first_reliable(rho) == 2
    assert rungs.first_reliable({1: 0.9, 2: 0.5, 3: 0.95}) == 3  # reliable from an epoch on, not once
    assert rungs.first_reliable({1: 0.5, 2: 0.6}) is None
    assert rungs.rank_by_epoch(curves[:2]) == {}  # two trials rank nothing


def test_the_study_end_records_the_rung_and_a_grown_round_reads_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    finished = [(f"t{i}", "finished", {"optimizer.lr": 0.001 * (i + 1)}, curve) for i, curve in enumerate([
        [0.40, 0.20, 0.30, 0.35], [0.30, 0.30, 0.40, 0.45], [0.20, 0.40, 0.50, 0.55], [0.10, 0.50, 0.60, 0.65]])]
    stopped = [("t9", "stopped_early", {"optimizer.lr": 0.02}, [0.9, 0.05])]  # not a finished trial: left out
    parent = write_study(client, tmp_path, "grown", finished + stopped)
    assert rungs.measured(client, parent) is None
    line = rungs.record(client, parent, "val_f1")
    assert "the 4 finished trials" in line and "ASHA's first rung could be epoch 2" in line, line
    assert rungs.measured(client, parent) == 2
    history = client.get_metric_history(parent, "rung_rho_val_f1")
    assert {m.step: m.value for m in history} == {1: -1.0, 2: 1.0, 3: 1.0}
    lonely = write_study(client, tmp_path, "lonely", finished[:2])
    assert rungs.record(client, lonely, "val_f1") is None and rungs.measured(client, lonely) is None

"""ASHA's first rung chosen by measurement: the earliest epoch whose validation score ranks a study's finished
trials as their last epoch's does.

ASHA stops a trial at a rung when it scores below the others there, which is right only when the score at the
rung predicts the final one. Once a study has at least `MIN_TRIALS` finished trials, Spearman's rho between each
epoch's score and the final score says from which epoch on it does (rho at least `RELIABLE` at that epoch and
every later one). The study's end records it on its parent run (metric `rung_rho_METRIC` by epoch, tag
`tune.measured_rung`), and a round that grows the study (`--resume --num-samples`) puts its first rung there.
"""
from __future__ import annotations

from mlflow import MlflowClient
from mlflow.entities import Metric

from tune import outcomes, tracking

MIN_TRIALS = 3
RELIABLE = 0.8
TAG = "tune.measured_rung"


def rank_by_epoch(curves: list[dict[int, float]]) -> dict[int, float]:
    """Spearman's rho, per epoch before the last, of the trials' scores at that epoch against their scores at their
    own last epoch, over the trials that reached it (at least MIN_TRIALS, and not all tied)."""
    from scipy.stats import spearmanr

    out = {}
    for epoch in sorted({e for curve in curves for e in curve}):
        pairs = [(curve[epoch], curve[max(curve)]) for curve in curves if epoch in curve and epoch < max(curve)]
        if len(pairs) >= MIN_TRIALS and len({a for a, _ in pairs}) > 1 and len({b for _, b in pairs}) > 1:
            out[epoch] = round(float(spearmanr(*zip(*pairs, strict=True)).statistic), 3)
    return out


def first_reliable(rho: dict[int, float]) -> int | None:
    """The earliest epoch from which on every measured rho is at least RELIABLE (None: none is)."""
    found = None
    for epoch in sorted(rho, reverse=True):
        if rho[epoch] < RELIABLE:
            break
        found = epoch
    return found


def record(client: MlflowClient, parent: str, metric: str) -> str | None:
    """At the study's end: measure the rung on its finished trials and keep it on its parent run; returns the
    line that says what was measured (None when too few trials finished)."""
    curves = []
    for run in tracking.trial_runs(client, parent):
        if run.data.tags.get("tune.outcome") == outcomes.FINISHED:
            history = client.get_metric_history(run.info.run_id, metric)
            curves.append({m.step: m.value for m in history})
    rho = rank_by_epoch(curves)
    if not rho:
        return None
    client.log_batch(parent, metrics=[Metric(f"rung_rho_{metric}", value, 0, epoch)
                                      for epoch, value in rho.items()])
    rung = first_reliable(rho)
    client.set_tag(parent, TAG, str(rung or ""))
    ranks = ", ".join(f"epoch {e} {v:.2f}" for e, v in rho.items())
    found = (f"ASHA's first rung could be epoch {rung}" if rung else
             f"no epoch before the last ranks them reliably (rho {RELIABLE}+)")
    return (f"rungs: how each epoch's {metric} ranks the {len(curves)} finished trials as their last does "
            f"(Spearman's rho): {ranks}; {found}")


def measured(client: MlflowClient, parent: str) -> int | None:
    """The rung the study's earlier rounds measured (None: not measured, or no epoch was reliable)."""
    value = client.get_run(parent).data.tags.get(TAG)
    return int(value) if value else None

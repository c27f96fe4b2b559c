"""Ensemble selection (tune/ensemble.py): the chosen trials weigh the same; no weights fitted to the split."""
from __future__ import annotations

import numpy as np

from tune.ensemble import select


def mask_probabilities(rows: list[tuple[float, float, float]]) -> dict[str, np.ndarray]:
    """A model's probabilities for task mask, one row per photo (the correct class first, see `truth`)."""
    return {"mask": np.array(rows)}


def test_each_trial_is_chosen_once_where_a_second_time_would_fit_one_photo():
    # 61 photos, all of class 0. A is right on photos 0-39 and 60, B on 20-59: averaged 1:1 they are right on
    # 0-59; on photo 60, where B is sure of the wrong class, only A counted twice (2:1) is right
    truth18 = np.zeros(61, dtype=int)  # mask 0, gender 0, age 0
    right, sure, unsure_wrong = (0.6, 0.2, 0.2), (0.9, 0.05, 0.05), (0.35, 0.55, 0.1)
    a = mask_probabilities([right] * 40 + [unsure_wrong] * 20 + [(0.8, 0.1, 0.1)])
    b = mask_probabilities([unsure_wrong] * 20 + [sure] * 40 + [(0.1, 0.85, 0.05)])
    counts, f1, best_single = select([a, b], truth18, "mask", max_steps=25)
    assert counts == [1, 1]  # with replacement: [2, 1], the one photo's gain
    assert best_single < f1 < 1.0

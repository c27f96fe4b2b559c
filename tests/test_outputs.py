"""A model's raw outputs as per-task probabilities in the competition's classes."""
import numpy as np
import pytest

from trainables.config import TrialConfig
from trainables.data import age_to_target, compose18, num_outputs
from trainables.outputs import predicted_ages, predicted_classes, task_probabilities

SHAPES = {"mask": 3, "gender": 2, "age": 3}


def cfg(task: str, age_head: str = "classify", age_bounds=(30, 60)) -> TrialConfig:
    return TrialConfig.model_validate({"task": task, "model": {"age_head": age_head},
                                       "data": {"age_bounds": list(age_bounds)}})


@pytest.mark.parametrize("task, age_head, keys", [
    ("all", "classify", ["mask", "gender", "age"]), ("multi", "classify", ["mask", "gender", "age"]),
    ("multi", "regress", ["mask", "gender", "age"]), ("age", "regress", ["age"]), ("age", "classify", ["age"]),
    ("mask", "classify", ["mask"]), ("gender", "classify", ["gender"]),
])
def test_probabilities_have_the_competition_shapes_and_sum_to_one(task, age_head, keys):
    config = cfg(task, age_head)
    outputs = np.random.default_rng(0).normal(size=(7, num_outputs(task, age_head))).astype(np.float32)
    probabilities = task_probabilities(config, outputs)
    assert list(probabilities) == keys
    for name, p in probabilities.items():
        assert p.shape == (7, SHAPES[name]) and (p >= 0).all()
        assert np.allclose(p.sum(axis=1), 1.0)
    assert predicted_classes(task, probabilities).shape == (7,)


def test_all_gives_the_marginals_of_its_18_classes():
    logits = np.full((1, 18), -20.0)
    logits[0, compose18(2, 1, 0)] = 20.0  # not wearing, female, young
    probabilities = task_probabilities(cfg("all"), logits)
    assert [int(p.argmax()) for p in probabilities.values()] == [2, 1, 0]
    assert predicted_classes("all", probabilities)[0] == compose18(2, 1, 0)


def test_multi_with_a_regressing_age_head_cuts_the_age_at_the_training_bounds():
    ages = np.array([20.0, 45.0, 58.5, 59.0, 61.0])
    outputs = np.zeros((5, 6))
    outputs[:, 5] = age_to_target(ages)
    outputs[:, 0] = outputs[:, 3] = 5.0  # wearing a mask, male
    assert np.allclose(predicted_ages(cfg("multi", "regress"), outputs), ages)
    for bounds, bands in [((30, 60), [0, 1, 1, 1, 2]), ((30, 58), [0, 1, 2, 2, 2])]:
        probabilities = task_probabilities(cfg("multi", "regress", bounds), outputs)
        assert list(probabilities["age"].argmax(axis=1)) == bands
        assert set(np.unique(probabilities["age"])) == {0.0, 1.0}  # one-hot
        assert list(predicted_classes("multi", probabilities)) == bands


def test_outputs_of_another_layout_are_refused():
    with pytest.raises(ValueError, match="task multi .* has 6 outputs"):
        task_probabilities(cfg("multi", "regress"), np.zeros((2, 8)))

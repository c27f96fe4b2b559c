import numpy as np
from sklearn.metrics import f1_score

from trainables.config import TrialConfig
from trainables.data import age_band, age_to_target
from trainables.metrics import compose18, decompose18, per_class_report, score


def cfg(task: str, age_head: str = "classify", age_bounds=(30, 60)) -> TrialConfig:
    return TrialConfig.model_validate({"task": task, "model": {"age_head": age_head},
                                       "data": {"age_bounds": list(age_bounds)}})


def test_macro_f1_matches_scikit_learn():
    rng = np.random.default_rng(0)
    labels, logits = rng.integers(0, 3, 200), rng.normal(size=(200, 3))
    result = score(cfg("age"), logits, labels)
    assert result["val_f1"] == f1_score(labels, logits.argmax(1), average="macro")
    assert np.array(result["confusion"]).sum() == 200


def test_eighteen_classes_round_trip():
    m, g, a = np.meshgrid(range(3), range(2), range(3), indexing="ij")
    labels = compose18(m.ravel(), g.ravel(), a.ravel())
    assert sorted(labels) == list(range(18))
    assert all(np.array_equal(x, y.ravel()) for x, y in zip(decompose18(labels), (m, g, a), strict=True))


def test_multi_composes_the_heads():
    labels = np.array([[0, 1, 2], [2, 0, 1]])
    logits = np.zeros((2, 8))
    logits[0, [0, 3 + 1, 5 + 2]] = 5  # mask 0, female, old: class 5
    logits[1, [2, 3 + 0, 5 + 0]] = 5  # mask 2, male, young: class 12 (true: 13)
    result = score(cfg("multi"), logits, labels)
    assert result["val_acc"] == 0.5 and result["val_f1_gender"] == 1.0 and result["val_f1_age"] < 1.0
    assert np.array(result["confusion"]).shape == (18, 18)


def test_per_class_report():
    report = per_class_report([[3, 1], [0, 4]], ["a", "b"])
    assert report[0] == {"class": "a", "precision": 1.0, "recall": 0.75, "f1": round(6 / 7, 4), "support": 4}


def test_a_model_trained_with_other_bounds_is_scored_in_the_competition_bands():
    ages = np.array([25, 45, 59, 65])
    truth = age_band(ages, (30, 60))  # 0 1 1 2
    trained = age_band(ages, (30, 58))  # 0 1 2 2: the person aged 59 is old for training ...
    assert list(truth) == [0, 1, 1, 2] and list(trained) == [0, 1, 2, 2]
    logits = np.eye(3)[trained] * 5  # a model that learned its training labels perfectly
    result = score(cfg("age", age_bounds=(30, 58)), logits, truth)
    assert result["val_acc"] == 0.75  # ... and scored as band 2 against the truth band 1
    assert np.array(result["confusion"])[1, 2] == 1


def test_regressing_age_head_is_cut_at_the_training_bounds_and_reports_its_error():
    ages = np.array([25.0, 45.0, 59.0, 65.0])
    predicted = ages + np.array([1.0, -2.0, 0.0, 3.0])
    outputs = age_to_target(predicted)[:, None]
    result = score(cfg("age", "regress", (30, 58)), outputs, age_band(ages, (30, 60)), ages)
    assert result["val_age_mae"] == 1.5 and result["val_acc"] == 0.75
    assert np.array(result["confusion"]).shape == (3, 3)
    assert "val_age_mae" not in score(cfg("age"), np.eye(3)[[0, 1, 1, 2]], age_band(ages, (30, 60)), ages)

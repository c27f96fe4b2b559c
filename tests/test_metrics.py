import numpy as np
from sklearn.metrics import f1_score

from trainables.metrics import compose18, decompose18, per_class_report, score


def test_macro_f1_matches_scikit_learn():
    rng = np.random.default_rng(0)
    labels, logits = rng.integers(0, 3, 200), rng.normal(size=(200, 3))
    result = score("age", logits, labels)
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
    result = score("multi", logits, labels)
    assert result["val_acc"] == 0.5 and result["val_f1_gender"] == 1.0 and result["val_f1_age"] < 1.0
    assert np.array(result["confusion"]).shape == (18, 18)


def test_per_class_report():
    report = per_class_report([[3, 1], [0, 4]], ["a", "b"])
    assert report[0] == {"class": "a", "precision": 1.0, "recall": 0.75, "f1": round(6 / 7, 4), "support": 4}

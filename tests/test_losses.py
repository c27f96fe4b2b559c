import numpy as np
import torch
import torch.nn.functional as F

from trainables.config import LossConfig
from trainables.data import age_to_target
from trainables.losses import TaskLoss, focal_loss, soft_f1_loss


def batch(n=32, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g)


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, target = batch()
    assert torch.allclose(focal_loss(logits, target, 0.0), F.cross_entropy(logits, target), atol=1e-6)
    assert torch.allclose(focal_loss(logits, target, 0.0, 0.1), F.cross_entropy(logits, target, label_smoothing=0.1),
                          atol=1e-6)


def test_focal_down_weights_easy_examples():
    logits, target = batch()
    assert focal_loss(logits, target, 2.0) < F.cross_entropy(logits, target)


def test_soft_f1_is_zero_when_perfect_and_high_when_wrong():
    target = torch.arange(4).repeat(4)
    perfect = F.one_hot(target, 4).float() * 50
    assert soft_f1_loss(perfect, target) < 1e-3
    assert soft_f1_loss(-perfect, target) > 0.99


def test_multi_sums_the_three_heads():
    logits = torch.randn(8, 8)
    target = torch.stack([torch.randint(0, 3, (8,)), torch.randint(0, 2, (8,)), torch.randint(0, 3, (8,))], 1)
    loss = TaskLoss(LossConfig(), "multi", target.numpy())(logits, target)
    parts = logits.split([3, 2, 3], 1)
    expected = sum(F.cross_entropy(p, target[:, i]) for i, p in enumerate(parts))
    assert torch.allclose(loss, expected)


def test_balanced_class_weights():
    labels = np.array([0] * 30 + [1] * 10)
    fn = TaskLoss(LossConfig(class_weights="balanced"), "gender", labels)
    assert torch.allclose(fn.weight0, torch.tensor([40 / 60, 40 / 20]))
    logits, target = torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 0, 1])
    assert torch.allclose(fn(logits, target), F.cross_entropy(logits, target, weight=fn.weight0))


def test_multi_with_a_regressing_age_head_takes_smooth_l1_and_no_age_weights():
    logits = torch.randn(8, 6)
    ages = torch.tensor([20, 25, 31, 45, 58, 59, 60, 70])
    target = torch.stack([torch.randint(0, 3, (8,)), torch.randint(0, 2, (8,)), ages], 1)
    fn = TaskLoss(LossConfig(class_weights="balanced"), "multi", target.numpy(), age_head="regress")
    assert fn.heads == [3, 2, 1] and fn.weight2 is None and fn.weight0 is not None
    mask, gender, age = logits.split([3, 2, 1], 1)
    expected = (F.cross_entropy(mask, target[:, 0], weight=fn.weight0)
                + F.cross_entropy(gender, target[:, 1], weight=fn.weight1)
                + F.smooth_l1_loss(age[:, 0], age_to_target(ages.float())))
    assert torch.allclose(fn(logits, target), expected)


def test_regressing_age_head_overfits_a_tiny_batch():
    g = torch.Generator().manual_seed(0)
    x, ages = torch.randn(8, 10, generator=g), torch.randint(18, 75, (8,), generator=g)
    model = torch.nn.Linear(10, 1)
    fn = TaskLoss(LossConfig(name="f1"), "age", ages.numpy(), age_head="regress")  # f1 is for classifying heads
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(100):
        loss = fn(model(x), ages)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]

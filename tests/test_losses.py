import numpy as np
import torch
import torch.nn.functional as F

from trainables.config import LossConfig
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
    loss = TaskLoss(LossConfig(), [3, 2, 3], target.numpy())(logits, target)
    parts = logits.split([3, 2, 3], 1)
    expected = sum(F.cross_entropy(p, target[:, i]) for i, p in enumerate(parts))
    assert torch.allclose(loss, expected)


def test_balanced_class_weights():
    labels = np.array([0] * 30 + [1] * 10)
    fn = TaskLoss(LossConfig(class_weights="balanced"), [2], labels)
    assert torch.allclose(fn.weight0, torch.tensor([40 / 60, 40 / 20]))
    logits, target = torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 0, 1])
    assert torch.allclose(fn(logits, target), F.cross_entropy(logits, target, weight=fn.weight0))

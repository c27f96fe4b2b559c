import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables.config import LossConfig
from trainables.data import age_to_target
from trainables.losses import TaskLoss, focal_loss, smoothed_one_hot, soft_f1_loss


def batch(n=32, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g)


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, target = batch()
    q = smoothed_one_hot(target, 5, 0.1)
    assert torch.allclose(focal_loss(logits, smoothed_one_hot(target, 5), 0.0), F.cross_entropy(logits, target),
                          atol=1e-6)
    assert torch.allclose(focal_loss(logits, q, 0.0), F.cross_entropy(logits, target, label_smoothing=0.1), atol=1e-6)
    focal = TaskLoss(LossConfig(name="focal", gamma=0.0, label_smoothing=0.1), "mask", target.numpy() % 3)
    assert torch.allclose(focal(logits[:, :3], target % 3), F.cross_entropy(logits[:, :3], target % 3,
                                                                            label_smoothing=0.1), atol=1e-6)


def test_focal_down_weights_easy_examples():
    logits, target = batch()
    assert focal_loss(logits, smoothed_one_hot(target, 5), 2.0) < F.cross_entropy(logits, target)


def test_soft_f1_is_zero_when_perfect_and_high_when_wrong():
    target = torch.arange(4).repeat(4)
    perfect = F.one_hot(target, 4).float() * 50
    assert soft_f1_loss(perfect, F.one_hot(target, 4).float()) < 1e-3
    assert soft_f1_loss(-perfect, F.one_hot(target, 4).float()) > 0.99


@pytest.mark.parametrize("name", ["cross_entropy", "focal", "f1"])
def test_soft_targets_of_whole_classes_score_as_the_labels(name):
    """A mixed batch's soft targets that happen to be one class each (lambda 1) give the loss of the labels,
    label smoothing and class weights included, for every loss."""
    logits, target = batch(c=3)
    cfg = LossConfig(name=name, label_smoothing=0.1 if name != "f1" else 0.0, class_weights="none")
    fn = TaskLoss(cfg, "mask", target.numpy())
    soft = [smoothed_one_hot(target, 3, cfg.label_smoothing)]
    assert torch.allclose(fn(logits, soft), fn(logits, target), atol=1e-6)


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


def separable(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Photos of 1 x 8 pixels whose bright pixels are the labels (mask 0-2, gender 3-4, age band 5-7), with noise:
    (N, 1, 8, 3) uint8 and (N, 3) labels. A linear model separates them exactly."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.stack([torch.randint(0, 3, (n,), generator=g), torch.randint(0, 2, (n,), generator=g),
                          torch.randint(0, 3, (n,), generator=g)], 1)
    images = torch.randint(0, 60, (n, 1, 8, 3), generator=g)
    for column, offset in enumerate((0, 3, 5)):
        images[torch.arange(n), 0, offset + labels[:, column]] += 150
    return images.to(torch.uint8), labels


@pytest.mark.parametrize("task, optimizer, loss", [
    ("mask", "sgd", {"name": "cross_entropy"}), ("mask", "adam", {"name": "focal"}),
    ("age", "adamw", {"name": "f1"}), ("mask", "sam", {"name": "focal", "label_smoothing": 0.1}),
    ("multi", "sam", {"name": "cross_entropy"}), ("multi", "adamw", {"name": "f1"}),
])
def test_every_loss_and_optimizer_learns_a_separable_problem(task, optimizer, loss):
    from trainables.config import OptimizerConfig
    from trainables.loop import Device, train_epoch
    from trainables.optim import make_optimizer

    torch.manual_seed(0)
    images, labels = separable()
    target = labels if task == "multi" else labels[:, {"mask": 0, "age": 2}[task]]
    heads = [3, 2, 3] if task == "multi" else [3]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(24, sum(heads)))
    lr = {"sgd": 0.5, "sam": 0.05, "adam": 0.05, "adamw": 0.05}[optimizer]
    opt, sam = make_optimizer(OptimizerConfig(name=optimizer, lr=lr, base="adam", weight_decay=0.0), model)
    loss_fn = TaskLoss(LossConfig(**loss), task, target.numpy())
    batches = [(images[i:i + 16], target[i:i + 16]) for i in range(0, len(images), 16)]
    dev = Device("cpu", torch.full((3,), 0.5), torch.full((3,), 0.25))
    losses = [train_epoch(model, batches, loss_fn, opt, sam, lambda step: lr, e * 6, dev)[0] for e in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses
    with torch.no_grad():
        logits = model(dev.batch(images))
    predicted = torch.stack([part.argmax(1) for part in logits.split(heads, 1)], 1)
    assert (predicted == target.reshape(len(target), -1)).all()  # every photo right, every head

import pytest
import torch

from trainables.config import OptimizerConfig, ScheduleConfig
from trainables.optim import lr_at, make_optimizer


def test_sam_step_is_the_gradient_at_the_perturbed_point():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    w0 = [p.detach().clone() for p in model.parameters()]
    rho, lr = 0.05, 0.1

    def loss_at(params):
        return ((x @ params[0].T + params[1] - y) ** 2).mean()

    # by hand: g at w0, e = rho g/||g||, g' at w0 + e, w1 = w0 - lr g'
    params = [w.clone().requires_grad_() for w in w0]
    g = torch.autograd.grad(loss_at(params), params)
    norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
    moved = [(w + rho * gi / norm).requires_grad_() for w, gi in zip(w0, g, strict=True)]
    g2 = torch.autograd.grad(loss_at(moved), moved)
    expected = [w - lr * gi for w, gi in zip(w0, g2, strict=True)]

    optimizer, sam = make_optimizer(OptimizerConfig(name="sam", base="sgd", lr=lr, momentum=0.0, weight_decay=0.0,
                                                    rho=rho), model)
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    sam.ascend()
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    sam.descend()
    for p, e in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(p, e, atol=1e-6)


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                       ("adamw", torch.optim.AdamW)])
def test_plain_optimizers(name, cls):
    optimizer, sam = make_optimizer(OptimizerConfig(name=name, nesterov=True), torch.nn.Linear(2, 2))
    assert isinstance(optimizer, cls) and sam is None


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "sam"])
def test_weight_decay_spares_biases_and_norm_weights(name):
    """A step with zero gradients moves only what weight decay acts on: the conv and linear weights."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2))
    with torch.no_grad():
        for p in model.parameters():  # none zero (a norm's bias starts at 0: decay could not move it)
            p.normal_()
    for spare, decayed in ((False, {"0.weight", "3.weight"}), (True, {n for n, _ in model.named_parameters()})):
        cfg = OptimizerConfig(name=name, lr=0.1, weight_decay=0.1, decay_norm_and_bias=spare)
        optimizer, sam = make_optimizer(cfg, model)
        groups = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
        assert {n for n, p in model.named_parameters() if groups[id(p)] > 0} == decayed
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        (sam.ascend() or sam.descend()) if sam else optimizer.step()
        moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert moved == decayed, (name, spare, moved)


def test_schedules():
    cosine = ScheduleConfig(name="cosine", warmup_epochs=1)
    assert lr_at(cosine, 1.0, 0, 10, 5) == pytest.approx(0.1)  # warm-up: step 1 of 10
    assert lr_at(cosine, 1.0, 10, 10, 5) == pytest.approx(1.0)
    assert lr_at(cosine, 1.0, 30, 10, 5) == pytest.approx(0.5)  # halfway through the cosine
    step = ScheduleConfig(name="step", step_epochs=2, step_gamma=0.1)
    assert [round(lr_at(step, 1.0, e * 10, 10, 6), 6) for e in range(6)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    assert lr_at(ScheduleConfig(name="none"), 0.3, 55, 10, 6) == 0.3

"""CutMix and MixUp: a mixed batch's targets are the shares of both photos in each mixed photo, for every head."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables.config import AugmentConfig
from trainables.mixing import batch_mix

HEADS = {"mask": 3, "gender": 2, "age": 1}  # multi with a regressing age head


def labelled_batch(n=8, seed=0):
    """Photo i is the constant i + 1 (so a mixed photo tells the shares of its two sources); multi's labels, the
    age in years."""
    g = torch.Generator().manual_seed(seed)
    images = torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 16, 16).clone()
    labels = torch.stack([torch.randint(0, 3, (n,), generator=g), torch.randint(0, 2, (n,), generator=g),
                          torch.randint(5, 90, (n,), generator=g)], 1)
    return images, labels


@pytest.mark.parametrize("mixup, cutmix", [(1.0, 0.0), (0.0, 1.0)])
def test_every_head_takes_the_shares_of_both_photos(mixup, cutmix):
    np.random.seed(0)
    mix = batch_mix(AugmentConfig(mixup=mixup, cutmix=cutmix), HEADS, regress_age=True, label_smoothing=0.1)
    images, labels = labelled_batch()
    n = len(images)
    mixed, (mask, gender, age) = mix(images.clone(), labels)
    # the share of photo N-1-i in mixed photo i, read off its pixels: lam * (i+1) + (1 - lam) * (N-i)
    own, other = torch.arange(1, n + 1).float(), torch.arange(n, 0, -1).float()
    lam = (mixed.mean(dim=(1, 2, 3)) - other) / (own - other)  # (an even batch: photo i is never its own pair)
    assert ((lam > 0.01) & (lam < 0.99)).any()  # a batch was mixed (by one weight, or one box, for all)
    for target, column, classes in ((mask, 0, 3), (gender, 1, 2)):
        q = F.one_hot(labels[:, column], classes).float() * 0.9 + 0.1 / classes  # label smoothing folded in
        expected = lam.view(-1, 1) * q + (1 - lam.view(-1, 1)) * q.flip(0)
        assert torch.allclose(target, expected, atol=1e-5), (target, expected)
        assert torch.allclose(target.sum(1), torch.ones(n))
    ages = labels[:, 2].float()
    assert torch.allclose(age, lam * ages + (1 - lam) * ages.flip(0), atol=1e-3)


def test_off_is_no_mix_and_an_odd_batch_is_left_as_it_is():
    assert batch_mix(AugmentConfig(), HEADS, regress_age=True, label_smoothing=0.0) is None
    mix = batch_mix(AugmentConfig(mixup=1.0), {"all": 18}, regress_age=False, label_smoothing=0.0)
    images, labels = labelled_batch(n=7)
    mixed, (target,) = mix(images.clone(), labels[:, 0] * 6)
    assert torch.equal(mixed, images) and torch.equal(target, F.one_hot(labels[:, 0] * 6, 18).float())


def test_a_trial_with_mixing_learns_and_validates_on_its_own_photos(demo_data, tiny_config):
    from trainables.config import TrialConfig
    from trainables.trial import Trial

    cfg = TrialConfig.model_validate(tiny_config(task="multi", data={"root": str(demo_data)},
                                                 augment={"mixup": 0.4, "cutmix": 1.0, "mix_switch_prob": 0.5},
                                                 loss={"name": "focal", "label_smoothing": 0.1}))
    runs = [Trial(cfg).run_epoch() for _ in range(2)]
    assert runs[0]["train_loss"] == runs[1]["train_loss"]  # each epoch's mixes come from (seed, epoch)
    plain = Trial(cfg.model_copy(update={"augment": AugmentConfig()})).run_epoch()
    assert plain["train_loss"] != runs[0]["train_loss"]  # the mix changed what was trained on

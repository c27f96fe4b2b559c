"""A trial without Ray: training, resuming from a checkpoint, a NaN loss, every task and optimizer."""
import json

import pytest
import torch

from trainables.config import TrialConfig
from trainables.trial import Trial


def make(demo_data, tiny, **sections) -> Trial:
    sections["data"] = {"root": str(demo_data), **sections.get("data", {})}
    return Trial(TrialConfig.model_validate(tiny(**sections)))


@pytest.mark.parametrize("task, optimizer, loss", [
    ("all", "sam", "focal"), ("multi", "sgd", "cross_entropy"), ("age", "adam", "f1"), ("mask", "adamw", "focal"),
])
def test_epoch_reports_the_task_metrics(demo_data, tiny_config, task, optimizer, loss):
    trial = make(demo_data, tiny_config, task=task, optimizer={"name": optimizer}, loss={"name": loss},
                 train={"epochs": 1}, data={"one_image_per_person": task in ("age", "all"),
                                            "sampler": "balanced" if task in ("all", "mask") else "shuffle"})
    result = trial.run_epoch()
    assert result["epoch"] == 1 and 0 <= result["val_f1"] <= 1 and result["train_loss"] > 0
    assert ("val_f1_18" in result) == (task in ("all", "multi"))
    assert not set(trial.train_persons) & set(trial.val_persons)


def test_resumed_trial_continues_where_it_stopped(demo_data, tiny_config, tmp_path):
    straight = make(demo_data, tiny_config)
    results = [straight.run_epoch() for _ in range(2)]
    first = make(demo_data, tiny_config)
    first.save(tmp_path, first.run_epoch())
    resumed = make(demo_data, tiny_config)
    resumed.load(tmp_path)
    assert resumed.epoch == 1
    again = resumed.run_epoch()
    assert again["epoch"] == 2
    assert again["val_f1"] == results[1]["val_f1"] and again["val_loss"] == pytest.approx(results[1]["val_loss"])
    saved = json.loads((tmp_path / "config.json").read_text())
    assert TrialConfig.model_validate(saved) == first.cfg


def test_nan_loss_raises(demo_data, tiny_config):
    trial = make(demo_data, tiny_config, optimizer={"name": "sgd", "lr": 1e12, "momentum": 0.0})
    with pytest.raises(FloatingPointError, match="loss became"):
        trial.run_epoch()


def test_one_image_per_person_with_a_batch_larger_than_the_persons(demo_data, tiny_config):
    trial = make(demo_data, tiny_config, data={"one_image_per_person": True, "max_persons": 10},
                 train={"batch_size": 64, "epochs": 1})
    assert len(trial.train_loader) == 1 and trial.run_epoch()["epoch"] == 1


def test_loader_workers_draw_different_augmentations(demo_data, tiny_config):
    trial = make(demo_data, tiny_config, augment={"preset": "heavy"}, train={"num_workers": 2, "batch_size": 4})
    trial.train_loader.dataset.labels[:] = 0
    trial.train_loader.dataset.index[:] = trial.train_loader.dataset.index[0]  # every photo the same
    first, second = [batch for _, batch in zip(range(2), trial.train_loader, strict=False)]
    assert not (first[0] == second[0]).all()  # worker 0's batch differs from worker 1's


def test_regressing_age_head_trains_and_reports_its_error(demo_data, tiny_config):
    trial = make(demo_data, tiny_config, task="age", model={"age_head": "regress"}, data={"age_bounds": [30, 58]},
                 loss={"class_weights": "balanced"}, train={"epochs": 1})
    assert trial.model.get_classifier().out_features == 1
    result = trial.run_epoch()
    assert 0 <= result["val_f1"] <= 1 and result["val_age_mae"] > 0 and result["train_loss"] > 0
    assert set(trial.train_labels) - {0, 1, 2}  # trained on ages in years
    assert set(trial.val_truth) <= {0, 1, 2} and len(trial.val_truth) == len(trial.val_ages)
    assert "val_f1_18" not in result and len(result["confusion"]) == 3


def test_training_bounds_change_the_labels_not_the_split_or_the_scoring(demo_data, tiny_config):
    default = make(demo_data, tiny_config, task="multi", train={"epochs": 1})
    moved = make(demo_data, tiny_config, task="multi", data={"age_bounds": [30, 40]}, train={"epochs": 1})
    assert (moved.train_persons, moved.val_persons) == (default.train_persons, default.val_persons)
    assert (moved.val_truth == default.val_truth).all()
    assert not (moved.train_labels == default.train_labels).all()


def test_augmentations_do_not_depend_on_the_number_of_loader_workers(demo_data, tiny_config):
    epochs = []
    for workers in (0, 2):
        trial = make(demo_data, tiny_config, augment={"preset": "heavy"}, train={"num_workers": workers})
        trial.train_loader.batch_sampler.set_epoch(5)
        epochs.append([images for images, _ in trial.train_loader])
    assert len(epochs[0]) == len(epochs[1]) > 1
    for a, b in zip(*epochs, strict=True):
        assert (a == b).all()


def test_first_epoch_reports_where_the_start_up_went_and_every_epoch_its_stages(demo_data, tiny_config):
    trial = make(demo_data, tiny_config)
    first, second = trial.run_epoch(), trial.run_epoch()
    assert all(first[k] > 0 for k in ("startup_data_s", "startup_model_s", "first_step_s"))
    assert "startup_data_s" not in second
    for epoch in (first, second):  # training (of which waiting on the loader after its first batch) and validation
        assert 0 <= epoch["loader_wait_s"] < epoch["train_s"] and epoch["val_s"] > 0
        assert abs(epoch["train_s"] + epoch["val_s"] - epoch["epoch_time_s"]) < 1e-6


def test_a_schedule_shortened_to_fit_a_deadline_still_ends_and_resumes_shortened(demo_data, tiny_config, tmp_path):
    import time

    trial = make(demo_data, tiny_config, train={"epochs": 6}, schedule={"name": "cosine"})
    trial.run_epoch()
    assert trial.fit_schedule(time.time() + 1000, epoch_s=10.0) is None  # 6 epochs fit: unchanged
    assert trial.fit_schedule(time.time() + 25, epoch_s=10.0) == 3  # two more fit: its schedule is 3 epochs now
    assert trial.fit_schedule(time.time() + 1000, epoch_s=10.0) == 6  # early in it, it grows back to its plan
    assert trial.fit_schedule(time.time() + 25, epoch_s=10.0) == 3
    steps = len(trial.train_loader)
    assert trial.lr(3 * steps - 1) < 0.01 * trial.cfg.optimizer.lr  # the cosine ends at the new last epoch
    result = trial.run_epoch()
    assert result["planned_epochs"] == 3
    trial.save(tmp_path, result)
    resumed = make(demo_data, tiny_config, train={"epochs": 6}, schedule={"name": "cosine"})
    resumed.load(tmp_path)  # a trial Ray retries keeps its shortened schedule
    assert resumed.cfg.train.epochs == 3 and resumed.run_epoch()["planned_epochs"] == 3


def test_measured_pace_is_what_an_epoch_takes(demo_data, tiny_config):
    import time

    trial = make(demo_data, tiny_config, train={"epochs": 3})
    pace = trial.measure_pace(steps=3)
    started = time.perf_counter()
    trial.run_epoch()
    took = time.perf_counter() - started
    assert pace["train_step_s"] > 0 and pace["val_batch_s"] > 0
    assert pace["epoch_s"] == pytest.approx(pace["train_step_s"] * len(trial.train_loader)
                                            + pace["val_batch_s"] * len(trial.val_loader))
    assert took / 5 < pace["epoch_s"] < took * 5  # the same order as a real epoch, from a few steps


def test_a_passing_slowdown_shortens_the_schedule_and_the_slack_grows_it_back(demo_data, tiny_config):
    """A trial planned at 20 epochs of 8 s in a budget of 200 s, slowed to 16 s for its epochs 3-5 (another
    process on the machine): it shortens its schedule to what fits at its slowest epoch, grows it back as the
    faster epochs since leave time over (still judged at the slowest pace: never a bet on the machine staying
    quiet), and ends within the budget."""
    trial = make(demo_data, tiny_config, train={"epochs": 20})
    clock, lengths = 0.0, []
    while trial.epoch < trial.cfg.train.epochs:
        trial.epoch += 1  # as run_epoch counts it
        span = 16.0 if 3 <= trial.epoch <= 5 else 8.0
        clock += span
        trial.replan(200.0, span, margin=1.1, now=clock)
        lengths.append(trial.cfg.train.epochs)
        if trial.epoch < trial.cfg.train.epochs:
            assert clock + (trial.cfg.train.epochs - trial.epoch) * trial.slowest * 1.1 <= 200.0  # slowest pace
    shortest = min(lengths)
    assert shortest < 20 and trial.epoch == trial.cfg.train.epochs > shortest and clock <= 200.0, (lengths, clock)
    late = make(demo_data, tiny_config, train={"epochs": 10})
    late.cfg.train.epochs, late.epoch = 7, 5  # shortened earlier, now past two thirds of it
    assert late.fit_schedule(1000.0, 1.0, now=0.0) is None  # it does not grow back so late
    # not one more epoch fits: the schedule ends now, at an epoch with a model (the budget would cut the next)
    assert late.fit_schedule(5.0, 10.0, now=0.0) == 5 == late.cfg.train.epochs


def test_an_ema_is_what_is_validated_saved_exported_and_resumed(demo_data, tiny_config, tmp_path):
    import shutil

    import torch

    from tune.export import evaluate_export, load_export, write_export

    def ema_trial():
        return make(demo_data, tiny_config, train={"epochs": 3, "ema": 0.9})

    straight = ema_trial()
    results = [straight.run_epoch() for _ in range(3)]
    first = ema_trial()
    result = first.run_epoch()
    averaged, trained = first.ema.module.state_dict(), first.model.state_dict()
    assert any(not torch.equal(averaged[k], trained[k]) for k in averaged)  # the average is not the weights
    assert result["val_f1"] == first.evaluate()["val_f1"] == results[0]["val_f1"]
    (tmp_path / "checkpoint").mkdir()
    first.save(tmp_path / "checkpoint", result)
    # the export (the checkpoint's model.safetensors, as `tune export` copies it) is the average, and re-scores
    out = tmp_path / "export"
    out.mkdir()
    shutil.copy2(tmp_path / "checkpoint" / "model.safetensors", out / "model.safetensors")
    write_export(out, first.cfg, result, (first.train_persons, first.val_persons))
    _, exported = load_export(out)
    assert all(torch.equal(v, averaged[k].cpu()) for k, v in exported.state_dict().items())
    assert evaluate_export(out)["val_f1"] == result["val_f1"]
    # a resume restores both the weights and their average: its epochs are the uninterrupted run's
    resumed = ema_trial()
    resumed.load(tmp_path / "checkpoint")
    again = [resumed.run_epoch() for _ in range(2)]
    assert [r["val_f1"] for r in again] == [r["val_f1"] for r in results[1:]]
    assert [r["val_loss"] for r in again] == pytest.approx([r["val_loss"] for r in results[1:]])


def test_the_mean_of_the_last_epochs_is_the_model_only_where_it_scores_better_and_survives_a_resume(
        demo_data, tiny_config, tmp_path):
    import torch

    def averaging_trial():
        return make(demo_data, tiny_config, train={"epochs": 3, "average_last": 2})

    straight, snapshots, results = averaging_trial(), [], []
    while straight.epoch < 3:
        result = straight.run_epoch()
        if straight.epoch >= 2:
            snapshots.append({k: v.clone() for k, v in straight.scored_model.state_dict().items()})
        results.append(straight.end_epoch(result))
    assert "average_val_f1" not in results[1]  # epoch 2 of 3 joins the sum; only the schedule's end is scored
    end = results[2]
    mean = {k: (snapshots[0][k] + snapshots[1][k]) / 2 if v.is_floating_point() else v
            for k, v in snapshots[1].items()}
    kept = end["average_val_f1"] > end["last_epoch_val_f1"]
    assert end["averaged_epochs"] == (2 if kept else 0)
    assert end["val_f1"] == max(end["average_val_f1"], end["last_epoch_val_f1"])
    expected = mean if kept else snapshots[1]
    assert all(torch.allclose(v, expected[k]) for k, v in straight.scored_model.state_dict().items())
    assert straight.evaluate()["val_f1"] == end["val_f1"]  # the model is what its result says
    straight.scored_model.load_state_dict(snapshots[1])
    assert straight.evaluate()["val_f1"] == end["last_epoch_val_f1"]
    # the running sum is in the checkpoint: a trial resumed after epoch 2 ends as the uninterrupted one
    first = averaging_trial()
    first.run_epoch()
    first.save(tmp_path, first.end_epoch(first.run_epoch()))
    assert (tmp_path / "tail.safetensors").is_file()
    resumed = averaging_trial()
    resumed.load(tmp_path)
    again = resumed.end_epoch(resumed.run_epoch())
    assert again["average_val_f1"] == end["average_val_f1"] and again["val_f1"] == end["val_f1"]


def test_layer_decay_gives_the_backbone_a_lower_lr_than_the_new_head(demo_data, tiny_config):
    cfg = TrialConfig.model_validate(tiny_config(data={"root": str(demo_data), "max_persons": 20},
                                                 optimizer={"name": "sgd", "lr": 0.1, "layer_decay": 0.5}))
    trial = Trial(cfg)
    trial.run_epoch()
    lr_of = {id(p): g["lr"] for g in trial.optimizer.param_groups for p in g["params"]}
    stem, head = trial.model.conv1[0].weight, trial.model.get_classifier().weight
    assert lr_of[id(head)] == pytest.approx(trial.lr(trial.step - 1))  # the head at the schedule's lr
    assert lr_of[id(stem)] <= lr_of[id(head)] * 0.5 ** 3  # test_resnet: stem, 4 stages, head: the stem far lower
    layers = sorted({round(lr, 12) for lr in lr_of.values()})
    assert len(layers) >= 5


def test_head_warmup_trains_the_new_head_alone_then_the_whole_model(demo_data, tiny_config):
    cfg = TrialConfig.model_validate(tiny_config(data={"root": str(demo_data), "max_persons": 20},
                                                 train={"head_warmup": 1.0, "epochs": 6}))
    trial = Trial(cfg)
    head = {name for name, _ in trial.model.get_classifier().named_parameters(prefix="fc")}
    before = {k: v.clone() for k, v in trial.model.state_dict().items()}
    trial.run_epoch()  # the warm-up: only the head moves; the backbone's weights and norm statistics stay
    after = trial.model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == head, moved
    frozen = {k: v.clone() for k, v in after.items()}
    trial.run_epoch()
    moved = {k for k in frozen if not torch.equal(frozen[k], trial.model.state_dict()[k])}
    assert "conv1.0.weight" in moved and any(k.endswith("running_mean") for k in moved)


def test_head_warmup_takes_at_most_a_sixth_of_the_schedule_and_its_cheaper_steps_are_measured(demo_data,
                                                                                              tiny_config):
    """A schedule the time budget made short keeps most of it for the whole model; the plan counts what the
    frozen backbone's steps save (no backward pass through it)."""
    cfg = TrialConfig.model_validate(tiny_config(data={"root": str(demo_data), "max_persons": 40},
                                                 model={"backbone": "test_resnet", "image_size": 64},
                                                 train={"head_warmup": 1.0, "epochs": 3}))
    trial = Trial(cfg)
    assert trial.warmup_steps == round(len(trial.train_loader) / 2) > 0  # 3 epochs: half an epoch, not one
    pace = trial.measure_pace(steps=6)
    assert 0 < pace["head_step_s"] < pace["train_step_s"]
    assert pace["head_warmup_saving_s"] == pytest.approx((pace["train_step_s"] - pace["head_step_s"])
                                                         * len(trial.train_loader))
    assert not trial.frozen and all(p.requires_grad for p in trial.model.parameters())  # measured, then thawed


@pytest.mark.parametrize("channels_last", [True, False])
def test_a_trial_on_the_cpu_trains_and_validates_in_the_memory_format_its_config_asks(demo_data, tiny_config,
                                                                                      channels_last):
    trial = make(demo_data, tiny_config, model={"channels_last": channels_last}, train={"epochs": 1})
    seen = []
    conv = next(m for m in trial.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda module, inputs, output: seen.append(
        (inputs[0].is_contiguous(memory_format=torch.channels_last), output.dtype)))
    trial.run_epoch()
    assert seen and set(seen) == {(channels_last, torch.float32)}  # fp32 on the CPU, training and validation
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_frozen_layers_keep_their_weights_and_statistics_and_the_export_loads_them(demo_data, tiny_config, tmp_path):
    from safetensors.torch import load_model, save_model

    from trainables.config import UserError
    from trainables.models import build_model, check_backbone

    trial = make(demo_data, tiny_config, data={"max_persons": 20}, model={"frozen_layers": 2}, train={"epochs": 1})
    before = {k: v.clone() for k, v in trial.model.state_dict().items()}
    trial.run_epoch()
    after = trial.model.state_dict()
    moved = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    # test_resnet: the stem (conv1, bn1) and layer1 frozen, weights and running statistics; the rest trains
    assert moved == {"layer2", "layer3", "layer4", "fc"}, moved
    assert not any(p.requires_grad for name, p in trial.model.named_parameters() if name.startswith("layer1."))
    save_model(trial.scored_model, str(tmp_path / "model.safetensors"))
    again = build_model(trial.cfg.model, 18)
    load_model(again, str(tmp_path / "model.safetensors"))  # strict: the frozen norms rebuilt alike
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(again.eval()(x), trial.model.eval()(x), atol=1e-5)
    with pytest.raises(UserError, match="freeze at most 4"):
        check_backbone(trial.cfg.model.model_copy(update={"frozen_layers": 5}))

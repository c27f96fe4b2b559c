"""Planning a time budget from a pace: the rules of tune/plan.py, given the paces a machine measured."""
import pytest

from trainables.config import UserError
from tune.config import load_study
from tune.plan import Pace, apply, apply_params, plan_study

STUDY = """
name: p
data: {root}
space:
  loss.label_smoothing: {{uniform: [0.0, 0.1]}}
search: {{min_epochs: 4}}
resources: {{cpus_per_trial: 1}}
"""


@pytest.fixture
def study(tmp_path, demo_data):
    path = tmp_path / "p.yaml"
    path.write_text(STUDY.format(root=demo_data))  # no train section: the plan's epochs must still reach the trials
    return load_study(path)


def paces(one_cpu: float, every_cpu: float, start: float = 2.0):
    """What a machine measured: an epoch on one CPU, and on all of them."""
    def measure_at(cfg, cpus):
        return Pace(epoch_s=one_cpu if cpus == 1 else every_cpu, start_s=start, cpus=cpus)
    return measure_at


def test_a_longer_budget_buys_longer_trials_and_a_slower_machine_shorter_ones(study):
    fast = plan_study(study, 1200, cpus=2, measure_at=paces(76, 50), ray_start_s=5)
    longer = plan_study(study, 2400, cpus=2, measure_at=paces(76, 50), ray_start_s=5)
    slower = plan_study(study, 2400, cpus=2, measure_at=paces(390, 245), ray_start_s=5)
    assert (fast.concurrent, fast.cpus_per_trial) == (2, 1)  # one full trial per slot, two slots
    assert fast.epochs == int((1200 - 2 - 5) // 76) == 15
    assert longer.epochs == 31 > fast.epochs
    assert slower.epochs == 6 < longer.epochs
    assert 1 <= fast.grace_period < fast.epochs


def test_one_slot_leaves_room_for_two_full_trials(study):
    study.search.max_concurrent = 1
    plan = plan_study(study, 1200, cpus=2, measure_at=paces(76, 50), ray_start_s=5)
    assert plan.concurrent == 1 and plan.epochs == int((600 - 2 - 5) // 76)


def test_a_slow_start_of_ray_trials_leaves_fewer_epochs(study):
    """What Ray adds to a trial's start is measured where it runs (a loaded machine: tens of seconds)."""
    quick = plan_study(study, 300, cpus=2, measure_at=paces(20, 15), ray_start_s=2)
    slow = plan_study(study, 300, cpus=2, measure_at=paces(20, 15), ray_start_s=60)
    assert (quick.epochs, slow.epochs) == ((300 - 2 - 2) // 20, (300 - 2 - 60) // 20)
    assert slow.pace.start_s == 62 and "62 s to start a trial" in slow.describe()


def test_a_budget_that_holds_barely_one_trial_trains_the_prior_alone_on_every_cpu(study):
    plan = plan_study(study, 250, cpus=2, measure_at=paces(103, 60))
    assert (plan.concurrent, plan.cpus_per_trial, plan.epochs) == (1, 2, 4)
    assert "fixed values alone, on every CPU" in plan.describe()


def test_min_epochs_that_fit_only_at_the_measured_pace_are_not_planned(study):
    """A running trial re-plans its epochs to come at its slowest so far, 10% slower (`Trial.replan`): 4 epochs
    of 76 s fit 320 s at the measured pace, but 4 of 83.6 s do not, and a plan of 4 would often end at 3 epochs,
    below search.min_epochs. The prior alone on both CPUs gets them safely instead."""
    assert plan_study(study, 340, cpus=2, measure_at=paces(76, 50)).concurrent == 2  # 4 epochs even 10% slower
    plan = plan_study(study, 320, cpus=2, measure_at=paces(76, 50))
    assert (plan.concurrent, plan.cpus_per_trial, plan.epochs) == (1, 2, 6)


def test_a_budget_that_holds_not_one_epoch_is_refused(study):
    with pytest.raises(UserError, match=r"one epoch of the study's model takes about 60 s.*give it at least 32 s more"):
        plan_study(study, 30, cpus=2, measure_at=paces(103, 60))  # named: the pace of the prior on every CPU


def test_a_short_budget_spends_no_seconds_measuring_trials_on_fewer_cpus(study):
    """The pace on every CPU is measured first: where not even it gives trials search.min_epochs, a trial on one
    CPU (no faster) cannot either, and its measurement (the slower one) would only eat the short budget."""
    cpus_measured = []

    def measure_at(cfg, cpus):
        cpus_measured.append(cpus)
        return paces(103, 60)(cfg, cpus)

    plan = plan_study(study, 200, cpus=2, measure_at=measure_at)  # 3 epochs on both CPUs: under min_epochs (4)
    assert cpus_measured == [2] and (plan.concurrent, plan.cpus_per_trial, plan.epochs) == (1, 2, 3)
    cpus_measured.clear()
    plan = plan_study(study, 1200, cpus=2, measure_at=measure_at)  # trials of one CPU get 4+: both measured
    assert cpus_measured == [2, 1] and (plan.concurrent, plan.cpus_per_trial) == (2, 1)
    # one slot: two trials one after the other do not get 4 epochs on every CPU, but one does, and so does a
    # trial on one CPU (5 of 76 s): the trials' own pace is still measured, and their layout kept
    study.search.max_concurrent = 1
    plan = plan_study(study, 400, cpus=2, measure_at=paces(76, 50))
    assert (plan.concurrent, plan.cpus_per_trial, plan.epochs) == (1, 1, 5)


def test_past_max_epochs_a_longer_budget_buys_more_trials_of_equal_length(study):
    study.search.max_epochs = 12  # the budget holds 2 slots of 31 epochs: 3 trials of 10 each, not 12 + 12 + 7
    plan = plan_study(study, 2400, cpus=2, measure_at=paces(76, 50))
    assert (plan.epochs, plan.concurrent) == (int((2400 / 3 - 2) // 76), 2) == (10, 2)
    assert "3 trials one after the other on each slot (search.max_epochs: 12)" in plan.describe()
    study.search.max_epochs = 40  # a cap the budget does not reach changes nothing
    assert plan_study(study, 2400, cpus=2, measure_at=paces(76, 50)).epochs == 31


def test_the_plan_reaches_the_trials_and_a_resumed_study_keeps_it(study, tmp_path):
    plan = plan_study(study, 1200, cpus=2, measure_at=paces(76, 50))
    apply(plan, study)
    assert study.trial_base()["train"]["epochs"] == plan.epochs == study.scheduler.max_t
    assert study.scheduler.grace_period == plan.grace_period and study.search.max_concurrent == 2
    again = load_study(tmp_path / "p.yaml")  # --resume: the YAML again, then the params the parent run kept
    assert apply_params({k: str(v) for k, v in plan.params().items()}, again)
    assert again.trial_base()["train"]["epochs"] == plan.epochs and again.resources.cpus_per_trial == 1
    assert not apply_params({"storage": "mlruns/ray"}, load_study(tmp_path / "p.yaml"))  # a study run unplanned


def test_what_the_heads_warmup_saves_is_planned(study):
    """An epoch of 190 s does not fit 191 s with a 10-s start at the full pace; its first sixth, the head's
    warm-up with the backbone frozen, costs 150 s less an epoch, and then it does."""
    def measure_at(cfg, cpus):
        return Pace(epoch_s=190, start_s=10, cpus=cpus, head_warmup_saving_s=150,
                    head_warmup=lambda epochs: min(0.5, epochs / 6))

    plan = plan_study(study, 191, cpus=1, measure_at=measure_at)
    assert plan.epochs == 1 and "(25 s less in all with the head's warm-up)" in plan.describe()
    with pytest.raises(UserError, match="one epoch of the study's model takes about 165 s"):
        plan_study(study, 170, cpus=1, measure_at=measure_at)
    with pytest.raises(UserError):
        plan_study(study, 191, cpus=1, measure_at=paces(190, 190, start=10))


def test_a_longer_budget_buys_larger_photos_before_longer_trials(study, tmp_path):
    """search.image_sizes: the largest size at which the trials still get search.min_epochs epochs. A size the
    smaller one's pace, scaled by the pixels, shows cannot fit is not measured."""
    study.search.image_sizes = [160, 112]
    measured = []

    def measure_at(cfg, cpus):  # an epoch costs its pixels here, a little less than in proportion at 160
        size = cfg.model.image_size
        measured.append(size)
        return Pace(epoch_s={112: 300.0, 160: 560.0}[size] * (1 if cpus == 1 else 0.6), start_s=8, cpus=cpus)

    short = plan_study(study, 1200, cpus=2, measure_at=measure_at)  # 3 epochs at 112 < 4: alone, on 2 CPUs
    assert measured == [112, 112] and short.image_size == 112
    measured.clear()
    medium = plan_study(study, 2000, cpus=2, measure_at=measure_at)  # 6 at 112; 160 scaled: 3 < 4, not measured
    assert measured == [112, 112] and (medium.image_size, medium.epochs, medium.concurrent) == (112, 6, 2)
    measured.clear()
    long = plan_study(study, 2400, cpus=2, measure_at=measure_at)  # 160 scaled: 3.9 < 4, not measured either
    assert measured == [112, 112] and long.image_size == 112
    measured.clear()
    long = plan_study(study, 2400 * 1.1, cpus=2, measure_at=measure_at)  # scaled 4.3, 3.9 at 10% slower: not measured
    assert measured == [112, 112] and long.image_size == 112
    long = plan_study(study, 2750, cpus=2, measure_at=measure_at)  # scaled 4.1 at 10% slower: measured, 4 at 160
    assert (long.image_size, long.epochs, long.concurrent) == (160, 4, 2) and "at 160 px" in long.describe()
    apply(long, study)
    assert study.trial_base()["model"]["image_size"] == 160 and study.trial_base()["train"]["epochs"] == 4
    again = load_study(tmp_path / "p.yaml")  # --resume: the size the study was run with
    assert apply_params({k: str(v) for k, v in long.params().items()}, again)
    assert again.trial_defaults().model.image_size == 160
    # the prior alone on every CPU gets the larger photos too where it still trains search.min_epochs
    alone = plan_study(study, 1200, cpus=2, measure_at=lambda cfg, cpus: Pace(
        epoch_s={112: 300.0, 160: 560.0}[cfg.model.image_size] * (1 if cpus == 1 else 0.35), start_s=8, cpus=cpus))
    assert (alone.image_size, alone.cpus_per_trial, alone.epochs) == (160, 2, 6)


def test_of_many_sizes_the_largest_that_fits_is_found_in_few_measurements(study):
    """From 112 px's pace, 160 looks as if it fits 4 epochs of 950 s; measured, it does not; 144, judged from 160's
    pace, does and is taken. 128 is never measured. Where 160 measures slower still, 144 judged from it cannot
    fit and is not measured either: 128 is."""
    study.search.image_sizes = [112, 128, 144, 160]
    measured = []

    def measuring(slowest):
        def measure_at(cfg, cpus):
            measured.append(cfg.model.image_size)
            return Pace(epoch_s={112: 100.0, 128: 135.0, 144: 190.0, 160: slowest}[cfg.model.image_size], start_s=8,
                        cpus=cpus)
        return measure_at

    plan = plan_study(study, 950, cpus=2, measure_at=measuring(240.0))
    assert measured == [112, 112, 160, 144] and (plan.image_size, plan.epochs, plan.concurrent) == (144, 4, 2)
    measured.clear()
    plan = plan_study(study, 950, cpus=2, measure_at=measuring(300.0))
    assert measured == [112, 112, 160, 128] and (plan.image_size, plan.epochs) == (128, 6)


def test_image_sizes_and_a_searched_image_size_are_refused(tmp_path, demo_data):
    path = tmp_path / "both.yaml"
    path.write_text(STUDY.format(root=demo_data).replace("search: {", "search: {image_sizes: [112, 160], ")
                    .replace("space:\n", "space:\n  model.image_size: {choice: [96, 128]}\n"))
    with pytest.raises(UserError, match="search.image_sizes and a searched model.image_size") as refused:
        load_study(path)
    assert "got {" not in str(refused.value) and "Value error" not in str(refused.value)  # the rule, not the file


def test_tune_trains_plan_counts_the_seconds_its_measurement_took(monkeypatch, tiny_config):
    """`tune train --time-budget`: the budget runs from the command's start, so what the measurement took (photos
    decoded into the cache first, the throw-away trial) is not planned again."""
    import time

    from trainables.config import TrialConfig
    from tune import plan

    def slow_measure(cfg, cpus, split=None):
        time.sleep(1.0)
        return Pace(epoch_s=1.0, start_s=0.2, cpus=cpus)

    monkeypatch.setattr(plan, "measure", slow_measure)
    cfg = TrialConfig.model_validate(tiny_config(train={"epochs": 50}))
    epochs, _ = plan.plan_training(cfg, 5.5, cpus=1)
    assert epochs == 4  # (5.5 - 1 measured - 0.2 to start) // 1; 5 with the measurement's second planned again

import optuna
import pytest

from trainables.config import TrialConfig, UserError, resolve_trial
from tune.space import Branching, SpaceSampler, parse_space

SPACE = {
    "model.backbone": {"choice": ["resnet18", "efficientnet_b0"]},
    "train.batch_size": {"int": [16, 64], "step": 16},
    "optimizer": {"choice": {
        "sgd": {"lr": {"loguniform": [1e-3, 1e-1]}, "momentum": {"uniform": [0.8, 0.95]}},
        "adamw": {"lr": {"loguniform": [1e-4, 1e-2]}},
        "sam": {"rho": {"uniform": [0.02, 0.1]}, "base": "adam"},
    }},
    "data.age_bounds": {"choice": [[30, 60], [30, 58]]},
}


def parse(space: dict) -> list:
    return parse_space(space, {}, "s.yaml")


def test_conditional_space_samples_only_the_branch_keys():
    sampler = SpaceSampler(parse(SPACE))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        values = sampler(trial)
        name = values["optimizer.name"]
        seen.add(name)
        assert ("optimizer.momentum" in values) == (name == "sgd")
        assert ("optimizer.rho" in values) == (name == "sam")
        if name == "sam":
            assert values["optimizer.base"] == "adam" and "optimizer.lr" not in values
        assert values["train.batch_size"] in (16, 32, 48, 64)
        assert values["data.age_bounds"] in ([30, 60], [30, 58])
        cfg = resolve_trial({}, values)  # every sample is a valid trial config
        assert isinstance(cfg, TrialConfig) and cfg.optimizer.name == name
        study.tell(trial, 0.5)
    assert seen == {"sgd", "adamw", "sam"}


def test_branching_is_parsed_as_such():
    nodes = parse({"loss": {"choice": {"focal": {"gamma": {"uniform": [1, 3]}}, "f1": {}}}})
    assert isinstance(nodes[0], Branching) and set(nodes[0].branches) == {"focal", "f1"}


@pytest.mark.parametrize("space, message", [
    ({"optimizer.lr": {"uniform": [0.1, 0.01]}}, r"low < high, got low=0.1 > high=0.01"),
    ({"optimizer.lr": {"loguniform": [0.0, 0.1]}}, r"bounds must be > 0, got low=0.0"),
    ({"optimizer.lr": {"uniform": [-1.0, 0.1]}}, r"optimizer.lr = -1.0 is not allowed"),
    ({"optimizer.lrate": {"uniform": [0.1, 0.2]}}, r"unknown key optimizer.lrate; did you mean optimizer.lr\?"),
    ({"optimizer.name": {"choice": ["sgd", "lion"]}}, r"optimizer.name = 'lion' is not allowed"),
    ({"train.epochs": {"int": [1.5, 3]}}, r"integer bounds"),
    ({"optimizer.lr": {"normal": [0, 1]}}, r"expected one of choice, uniform, loguniform, int"),
    ({"optimizer.lr": {"choice": []}}, r"non-empty list"),
    ({"train.batch_size": {"int": [16, 64], "step": 0.5}}, r"step must be a whole number"),
    ({"model": {"choice": {"a": {}}}}, r"branches need a section with a name"),
    ({"optimizer": {"choice": {"sgd": {"lr": {"uniform": [0.1, 0.2]}}, "adam": {"lr": {"loguniform": [0.1, 0.2]}}}}},
     r"different kinds of distributions"),
])
def test_impossible_spaces_are_one_line_errors(space, message):
    with pytest.raises(UserError, match=message) as e:
        parse(space)
    assert "\n" not in str(e.value) and "s.yaml" in str(e.value)


def test_age_bounds_and_age_head_are_searchable():
    space = {"data.age_bounds": {"choice": [[30, 60], [30, 58]]}, "model.age_head": {"choice": ["classify", "regress"]}}
    nodes = parse_space(space, {"task": "age"}, "s.yaml")
    sampler = SpaceSampler(nodes)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        cfg = resolve_trial({"task": "age"}, sampler(trial))
        seen.add((cfg.data.age_bounds, cfg.model.age_head))
        study.tell(trial, 0.5)
    assert seen == {(b, h) for b in [(30, 60), (30, 58)] for h in ["classify", "regress"]}


def test_a_regressing_age_head_is_refused_for_task_all_in_a_space():
    with pytest.raises(UserError, match="space.model.age_head: .*regress needs task age or multi"):
        parse({"model.age_head": {"choice": ["classify", "regress"]}})


def test_the_prior_point_holds_the_fixed_values_the_space_can_give():
    from tune.space import prior_point

    nodes = parse_space({"optimizer.lr": {"loguniform": [1.0e-4, 1.0e-2]}, "model.backbone": {"choice": ["resnet18",
                         "resnet34"]}, "train.batch_size": {"int": [16, 64], "step": 16},
                         "optimizer.weight_decay": {"uniform": [0.0, 0.1]}}, {}, "s.yaml")
    fixed = TrialConfig.model_validate({"optimizer": {"lr": 0.5, "weight_decay": 0.05}, "train": {"batch_size": 40},
                                        "model": {"backbone": "resnet34"}})
    # lr out of its range and 40 off the batch size's step grid: left to the sampler
    assert prior_point(nodes, fixed) == {"model.backbone": "resnet34", "optimizer.weight_decay": 0.05}

from pathlib import Path

import pytest

from trainables.config import TrialConfig, UserError, resolve_trial
from tune.config import load_study
from tune.search.checks import check_backbones
from tune.space import parse_space

SPACES = sorted((Path(__file__).resolve().parent.parent / "search_spaces").glob("*.yaml"))


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_shipped_study_loads(path):
    study = load_study(path)
    nodes = parse_space(study.space, study.trial_base(), str(path))
    check_backbones(study, nodes)
    assert study.scheduler.max_t == study.train.epochs


def test_shipped_studies_cover_every_task():
    assert {p.stem for p in SPACES} >= {"mask", "gender", "age", "all", "multi", "demo"}


def test_a_study_file_extends_another(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "cpu.yaml").write_text(
        "name: cpu\ntask: all\nmodel: {backbone: resnet18, image_size: 64}\naugment: {center_crop: [320, 256]}\n"
        "train: {epochs: 8}\nspace:\n  optimizer.lr: {loguniform: [1.0e-3, 1.0e-2]}\n"
        "  loss.label_smoothing: {uniform: [0.0, 0.1]}\n")
    (tmp_path / "mine.yaml").write_text(
        "extends: base/cpu.yaml\ntask: age\nmodel: {image_size: 96}\naugment: {center_crop: null}\n"
        "space:\n  loss.label_smoothing: null\n  model.age_head: {choice: [classify, regress]}\n")
    study = load_study(tmp_path / "mine.yaml")
    assert study.name == "mine" and study.task == "age"  # its own name, never the base's
    assert (study.model.backbone, study.model.image_size) == ("resnet18", 96)  # merged key by key
    assert study.augment.center_crop is None and study.train.epochs == 8  # null is a value too: no crop
    assert study.space == {"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-2]},
                           "model.age_head": {"choice": ["classify", "regress"]}}


def test_extends_that_cannot_be_followed_is_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\ntask: age\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(UserError, match=r"b.yaml: extends: a.yaml extends this file again \(a circle\)"):
        load_study(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(UserError, match=r"c.yaml: extends: .*missing.yaml is not a file"):
        load_study(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: [a.yaml]\n")
    with pytest.raises(UserError, match="d.yaml: extends: takes the path of another study file"):
        load_study(tmp_path / "d.yaml")


@pytest.mark.parametrize("name, base", [("cpu-age", "cpu"), ("multi", "all"), ("age", "all"), ("gender", "all")])
def test_shipped_studies_for_one_task_are_their_base_plus_what_the_task_needs(name, base):
    """They cannot drift from their base: every fixed value they do not set is the base's."""
    folder = SPACES[0].parent
    study, parent = load_study(folder / f"{name}.yaml"), load_study(folder / f"{base}.yaml")
    assert "extends:" in (folder / f"{name}.yaml").read_text()
    if name == "cpu-age":
        assert study.model == parent.model and study.augment == parent.augment and study.train == parent.train
        assert study.space == {**parent.space, "model.age_head": {"choice": ["classify", "regress"]},
                               "data.age_bounds": {"choice": [[30, 60], [30, 58]]}}
    assert study.resources == parent.resources and study.task == name.removeprefix("cpu-")


def test_unknown_key_names_key_file_and_nearest(tmp_path):
    path = write(tmp_path, "task: age\noptimizer:\n  lrr: 0.1\n")
    with pytest.raises(UserError, match=r"study.yaml: unknown key optimizer.lrr; did you mean optimizer.lr\?"):
        load_study(path)


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(UserError, match="unknown key shceduler; did you mean scheduler"):
        load_study(write(tmp_path, "shceduler: {name: asha}\n"))


def test_yaml_syntax_error_names_the_line(tmp_path):
    with pytest.raises(UserError, match=r"study.yaml:3: YAML syntax error"):
        load_study(write(tmp_path, "task: age\nmodel:\n  backbone: [resnet18\n"))


def test_bad_value_is_one_line(tmp_path):
    with pytest.raises(UserError, match="task: Input should be") as e:
        load_study(write(tmp_path, "task: ages\n"))
    assert "\n" not in str(e.value)


def test_overrides_and_defaults(tmp_path):
    study = load_study(write(tmp_path, "task: age\ndata: some/where\n"),
                       {"train.epochs": 3, "optimizer.lr": 0.5, "name": "x"})
    assert study.name == "x" and study.train.epochs == 3 and study.optimizer.lr == 0.5
    assert Path(study.data.root).is_absolute() and study.data.root.endswith("some/where")
    assert study.scheduler.max_t == 3 and study.loss.name == "cross_entropy"


def test_max_t_beyond_epochs_is_refused(tmp_path):
    with pytest.raises(UserError, match="max_t"):
        load_study(write(tmp_path, "train: {epochs: 2}\nscheduler: {max_t: 5}\n"))


def test_augment_preset_fills_only_unset_values():
    cfg = TrialConfig.model_validate({"augment": {"preset": "heavy", "hflip": 0.0}})
    assert cfg.augment.hflip == 0.0 and cfg.augment.grid_dropout == 0.3


def test_sampled_preset_reaches_the_trial(tmp_path):
    study = load_study(write(tmp_path, "augment: {hflip: 0.1}\n"))
    cfg = resolve_trial(study.trial_base(), {"augment.preset": "heavy"})
    assert cfg.augment.hflip == 0.1 and cfg.augment.crop_scale == 0.5


def test_unknown_backbone(tmp_path):
    study = load_study(write(tmp_path, "model: {backbone: resnet_nonexistent}\n"))
    with pytest.raises(UserError, match="unknown timm backbone 'resnet_nonexistent'"):
        check_backbones(study, [])


def test_overrides_through_an_empty_section_and_into_a_value(tmp_path):
    assert load_study(write(tmp_path, "train:\n"), {"train.epochs": 3}).train.epochs == 3
    with pytest.raises(UserError, match="cannot set train.epochs.x: epochs holds a value"):
        load_study(write(tmp_path, "train: {epochs: 2}\n"), {"train.epochs.x": 1})


def test_weights_file_becomes_absolute(tmp_path):
    assert Path(load_study(write(tmp_path, "model: {pretrained_file: w.pth}\n")).model.pretrained_file).is_absolute()


@pytest.mark.parametrize("task", ["all", "mask", "gender"])
def test_regressing_age_head_needs_an_age_head_of_its_own(tmp_path, task):
    with pytest.raises(UserError, match=f"age_head: regress needs task age or multi .*but task is {task}") as e:
        load_study(write(tmp_path, f"task: {task}\nmodel: {{age_head: regress}}\n"))
    assert "\n" not in str(e.value)
    for ok in ("age", "multi"):
        assert TrialConfig.model_validate({"task": ok, "model": {"age_head": "regress"}}).model.age_head == "regress"


def test_score_age_bounds_are_checked_like_the_training_bounds(tmp_path):
    with pytest.raises(UserError, match=r"score_age_bounds must be two increasing positive ages, got \[60, 30\]"):
        load_study(write(tmp_path, "data: {score_age_bounds: [60, 30]}\n"))
    cfg = TrialConfig()
    assert cfg.data.age_bounds == cfg.data.score_age_bounds == (30, 60) and cfg.model.age_head == "classify"


def test_time_budgets_read_as_durations():
    from tune.config import parse_duration

    assert [parse_duration(t) for t in ("1200", "90s", "20m", "1.5h", "1h30m")] == [1200, 90, 1200, 5400, 5400]
    for wrong in ("", "soon", "20 minutes", "0", "-5m"):
        with pytest.raises(UserError, match="time budget"):
            parse_duration(wrong)

import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from trainables import data
from trainables.config import DataConfig, UserError


def copy_of(demo_data, tmp_path):
    out = tmp_path / "train"
    shutil.copytree(demo_data, out)
    return out


def test_table_labels_and_hidden_files(demo_data):
    table = data.read_table(demo_data)
    assert len(table) == 7 * table["person"].nunique() == 7 * 60
    assert not any("/._" in f for f in table["file"])  # AppleDouble files are skipped
    assert sorted(table["mask"].value_counts().to_dict().items()) == [(0, 300), (1, 60), (2, 60)]
    labels = data.targets(table, "all", (30, 60))
    band = data.age_band(table["age"].to_numpy(), (30, 60))
    assert np.array_equal(labels, 6 * table["mask"] + 3 * table["gender"] + band)
    assert list(data.age_band(np.array([29, 30, 59, 60]), (30, 60))) == [0, 1, 1, 2]
    assert data.targets(table, "multi", (30, 58)).shape == (len(table), 3)


def test_competition_top_folder_is_accepted(demo_data):
    assert data.train_dir(demo_data.parent) == demo_data


def test_split_is_by_person_stratified_and_seeded(demo_data):
    table = data.read_table(demo_data)
    cfg = DataConfig(root=str(demo_data), val_fraction=0.25, split_seed=3)
    train, val = data.split_persons(table, cfg)
    assert not set(train) & set(val)
    assert set(train) | set(val) == set(table["person"])
    assert len(val) == 15
    assert (train, val) == data.split_persons(table, cfg)
    assert val != data.split_persons(table, cfg.model_copy(update={"split_seed": 4}))[1]
    persons = table.drop_duplicates("person").set_index("person")
    share = persons.loc[val, "gender"].mean(), persons.loc[train, "gender"].mean()
    assert abs(share[0] - share[1]) < 0.15  # stratified by gender (and age band)


def test_missing_folder_and_csv(tmp_path):
    with pytest.raises(UserError, match="data folder not found"):
        data.read_table(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no train.csv"):
        data.read_table(tmp_path)


def test_row_without_folder(demo_data, tmp_path):
    root = copy_of(demo_data, tmp_path)
    victim = sorted((root / "images").iterdir())[0]
    shutil.rmtree(victim)
    with pytest.raises(UserError, match=rf"line \d+: folder .*{victim.name} is missing"):
        data.read_table(root)


def test_person_with_missing_photo(demo_data, tmp_path):
    root = copy_of(demo_data, tmp_path)
    folder = sorted((root / "images").iterdir())[1]
    (folder / "incorrect_mask.jpg").unlink()
    with pytest.raises(UserError, match="missing image.* incorrect_mask"):
        data.read_table(root)


def test_corrupted_image_is_named(demo_data, tmp_path):
    root = copy_of(demo_data, tmp_path)
    bad = sorted((root / "images").iterdir())[2] / "normal.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    with pytest.raises(UserError, match=f"cannot read image {bad}"):
        data.load_images([str(bad)], 32, None)


def test_load_image_crops_and_resizes(demo_data):
    file = data.read_table(demo_data)["file"].iloc[0]
    image = data.load_image(file, 48, (384, 320))
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8 and image.std() > 5


def test_split_of_few_persons_falls_back_to_coarser_strata(demo_data):
    table = data.read_table(demo_data, max_persons=20)
    train, val = data.split_persons(table, DataConfig(val_fraction=0.9))
    assert len(train) == 2 and len(val) == 18


def test_training_labels_and_scoring_labels_have_their_own_bounds():
    table = pd.DataFrame({"age": [25, 58, 59, 60], "mask": [0, 0, 0, 0], "gender": [1, 1, 1, 1]})
    assert list(data.targets(table, "age", (30, 58))) == [0, 2, 2, 2]  # a person aged 59 is old for training
    assert list(data.targets(table, "age", (30, 60))) == [0, 1, 1, 2]  # and in band 1 for scoring
    assert list(data.targets(table, "age", (30, 58), "regress")) == [25, 58, 59, 60]  # a regression head: years
    assert data.targets(table, "multi", (30, 58), "regress")[:, 2].tolist() == [25, 58, 59, 60]
    assert data.heads("multi", "regress") == {"mask": 3, "gender": 2, "age": 1}
    assert data.num_outputs("age", "regress") == 1
    assert data.heads("multi") == data.HEADS and data.num_outputs("all") == 18
    with pytest.raises(ValueError, match="no age head"):
        data.heads("all", "regress")


def test_split_does_not_depend_on_the_training_bounds(demo_data):
    table = data.read_table(demo_data)
    default = data.split_persons(table, DataConfig())
    assert data.split_persons(table, DataConfig(age_bounds=(30, 58))) == default
    assert data.split_persons(table, DataConfig(age_bounds=(25, 40))) == default
    # the strata are the competition's age bands: the split of the default config is what it was before
    persons = table.drop_duplicates("person")
    strata = persons["gender"].to_numpy() * 3 + data.age_band(persons["age"].to_numpy(), (30, 60))
    train, val = train_test_split(persons["person"].to_numpy(), test_size=12, random_state=0, stratify=strata)
    assert default == (sorted(train), sorted(val))


def test_one_image_per_person_draws_each_person_exactly_once_an_epoch():
    from trainables.loader import Batches

    persons = np.repeat(np.arange(13), 7)  # 13 persons of 7 photos, in the table's order
    batches = Batches(len(persons), 4, seed=3, shuffle=True, persons=persons)
    drawn = []
    for epoch in range(3):
        batches.set_epoch(epoch)
        picks = [i for _, batch in batches for i in batch]
        assert sorted(persons[picks]) == list(range(13))  # every person once, none twice
        drawn.append(picks)
    assert drawn[0] != drawn[1] and drawn[1] != drawn[2]  # a new photo and order each epoch


def test_a_balanced_sampler_draws_every_class_about_as_often_in_an_epoch_of_the_same_length():
    from trainables.loader import Batches

    classes = np.repeat([0, 1, 2], [700, 250, 50])  # 70% / 25% / 5%, as mask wear / not wear / incorrect
    batches = Batches(len(classes), 10, seed=1, shuffle=True, drop_last=True, classes=classes)
    picks = np.array([i for _, batch in batches for i in batch])
    assert len(picks) == len(classes)  # an epoch is still the data set's length
    shares = np.bincount(classes[picks], minlength=3) / len(picks)
    assert np.abs(shares - 1 / 3).max() < 0.05, shares
    # one photo a person: persons are drawn, weighted by their photos; the photos' classes come out even
    persons = np.repeat(np.arange(100), 10)
    labels = np.where(np.arange(1000) % 10 < 8, 0, 1)  # each person 8 photos of class 0, 2 of class 1
    labels[persons >= 90] = 2  # and 10 persons of class 2 only (as the >= 60 age band)
    batches = Batches(len(labels), 10, seed=1, shuffle=True, persons=persons, drop_last=True, classes=labels)
    drawn = np.concatenate([[i for _, batch in batches for i in batch] for batches.epoch in range(20)])
    assert len(drawn) == 20 * 100  # one photo a draw, as many draws as persons
    shares = np.bincount(labels[drawn], minlength=3) / len(drawn)
    assert np.abs(shares - 1 / 3).max() < 0.04, shares
    assert set(persons[drawn]) == set(range(100))


def test_the_balanced_sampler_evens_the_task_s_classes(demo_data):
    table = data.read_table(demo_data)
    assert list(data.sampling_classes(table, "multi", (30, 60))) == list(data.targets(table, "all", (30, 60)))
    ages = data.sampling_classes(table, "age", (30, 60))  # bands, also for a regressing head
    assert set(ages) <= {0, 1, 2} and list(ages) == list(data.age_band(table["age"].to_numpy(), (30, 60)))

"""The decoded-photo cache: filled once (also by processes starting together), rebuilt when the data changes,
and the cached input pipeline equal to decoding every photo when it is drawn."""
import json
import multiprocessing
import os

import numpy as np
import pytest

from tests.cache_attacher import attach
from trainables import cache, data
from trainables.config import AugmentConfig, TrialConfig
from trainables.loader import CachedPhotos, DecodedPhotos, train_loader
from trainables.transforms import eval_transform, train_transform
from trainables.trial import Trial
from tune.cli import main


def files_of(root, persons=6):
    return data.read_table(root, persons)["file"].tolist()


def test_filled_once_then_memory_mapped(demo_data, tmp_path):
    files = files_of(demo_data)
    first = cache.cached_images(files, 24, (384, 320), tmp_path, str(demo_data))
    again = cache.cached_images(files, 24, (384, 320), tmp_path, str(demo_data))
    assert cache.FILLED.count(cache.fingerprint(files, 24, (384, 320))) == 1
    assert isinstance(again, np.memmap) and not again.flags.writeable
    np.testing.assert_array_equal(np.asarray(first), data.load_images(files, 24, (384, 320)))
    [entry] = cache.entries(tmp_path)
    assert entry["images"] == len(files) and entry["size"] == 24 and entry["data"] == str(demo_data)


def test_processes_starting_together_decode_once(demo_data, tmp_path):
    files = files_of(demo_data)
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.map(attach, [(files, tmp_path)] * 3)
    assert sorted(filled for filled, _ in results) == [0, 0, 1]
    assert len({total for _, total in results}) == 1
    assert [p.name for p in tmp_path.glob("*.npy")] == [f"{cache.fingerprint(files, 20, None)}.npy"]


def test_changed_data_gets_a_new_entry_and_the_stale_one_goes(demo_data, tmp_path):
    files = files_of(demo_data)
    cache.cached_images(files, 16, None, tmp_path, str(demo_data))
    old = cache.fingerprint(files, 16, None)
    st = os.stat(files[0])
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the photo was replaced
    cache.cached_images(files, 16, None, tmp_path, str(demo_data))
    cache.cached_images(files, 20, None, tmp_path, str(demo_data))  # another size is another entry
    cache.cached_images(files[:7], 16, None, tmp_path, str(demo_data))  # a subset (say evaluate's) is no stale copy
    keys = {e["key"] for e in cache.entries(tmp_path)}
    assert old not in keys and len(keys) == 3 and cache.fingerprint(files, 16, None) in keys


def test_cache_ls_and_clear(demo_data, tmp_path, capsys):
    cache.cached_images(files_of(demo_data), 16, None, tmp_path, str(demo_data))
    assert main(["cache", "ls", "--dir", str(tmp_path)]) == 0
    assert "1 entries" in capsys.readouterr().out
    (tmp_path / "notes.json").write_text("{}")  # not the cache's: left alone
    assert main(["cache", "clear", "--dir", str(tmp_path)]) == 0
    assert cache.entries(tmp_path) == [] and [p.name for p in tmp_path.iterdir()] == ["notes.json"]


@pytest.mark.parametrize("margin", [0.0, 0.25])
def test_cached_batches_equal_decoded_batches(demo_data, tmp_path, margin):
    """Same photos, same seeds: the cached pipeline yields exactly what decoding each drawn photo yields."""
    augment = AugmentConfig(preset="heavy", decode_margin=margin)
    files, size = files_of(demo_data), 32
    decoded = augment.decoded_size(size)
    labels = np.arange(len(files))
    images = cache.cached_images(files, decoded, augment.center_crop, tmp_path, str(demo_data))
    index = np.arange(len(files))
    loaders = [train_loader(dataset, 8, seed=3, workers=0) for dataset in (
        CachedPhotos(images, index, labels, train_transform(augment, size, 3)),
        DecodedPhotos(files, decoded, augment.center_crop, labels, train_transform(augment, size, 3)))]
    for (a, ya), (b, yb) in zip(*loaders, strict=True):
        assert a.shape == (8, size, size, 3) and a.dtype == b.dtype
        np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    evaluation = CachedPhotos(images, index, labels, eval_transform(augment, size))
    assert evaluation.__getitems__((0, [0, 1]))[0].shape == (2, size, size, 3)


def test_trial_trains_the_same_from_the_cache_and_from_the_files(demo_data, tiny_config):
    results = []
    for use_cache in (True, False):
        cfg = TrialConfig.model_validate(tiny_config(data={"root": str(demo_data), "cache": use_cache},
                                                     augment={"preset": "medium"}, train={"epochs": 1}))
        result = Trial(cfg).run_epoch()
        results.append({k: v for k, v in result.items() if not k.endswith("_s")})
    assert json.dumps(results[0], sort_keys=True) == json.dumps(results[1], sort_keys=True)


def test_study_fills_the_cache_for_every_size_its_space_lists(demo_data, tmp_path):
    from tune import space
    from tune.config import StudyConfig
    from tune.search import checks

    def pairs(space_yaml: dict) -> list:
        cfg = StudyConfig.model_validate({"name": "s", "data": str(demo_data), "model": {"image_size": 40},
                                         "augment": {"center_crop": None}, "space": space_yaml})
        return checks.decodings(cfg, space.parse_space(cfg.space, cfg.trial_base(), "s.yaml"))

    assert pairs({}) == [(40, None)]
    assert pairs({"model.image_size": {"choice": [32, 48]}, "augment.decode_margin": {"choice": [0.0, 0.25]}}) == [
        (32, None), (40, None), (48, None), (60, None)]
    assert pairs({"model.image_size": {"int": [32, 64]}}) == [(40, None)]  # a range: the trials fill their own


def test_each_augmentation_draws_independently_of_the_others():
    import albumentations as A

    from trainables.transforms import reseed

    pipeline = A.Compose([A.HorizontalFlip(p=0.5), A.ToGray(p=0.1)], save_applied_params=True)
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    both = 0
    for seed in range(2000):
        reseed(pipeline, seed)
        applied = {name for name, _ in pipeline(image=image)["applied_transforms"]}
        both += applied >= {"HorizontalFlip", "ToGray"}
    assert 0.03 < both / 2000 < 0.08  # 0.5 * 0.1 when independent; 0.1 when seeded alike

"""What each of the processes of test_cache's "starting together" test runs: a module of its own, so that a
spawned process imports the cache alone (1 CPU-s), not the test module's torch and timm (7 CPU-s)."""
import numpy as np

from trainables import cache


def attach(args):
    files, folder = args
    images = cache.cached_images(files, 20, None, folder, "demo")
    return len(cache.FILLED), int(np.asarray(images).sum())

"""A real study on real faces (../shared/data, masks drawn on them): the service learns the mask state."""
from __future__ import annotations

import pytest

from tests.test_study import here, runs_of

pytestmark = pytest.mark.slow

STUDY = """
name: faces
task: mask
model: {backbone: resnet10t, image_size: 64}
train: {epochs: 3, batch_size: 32, num_workers: 0}
optimizer: {name: adamw, lr: 0.002}
space:
  optimizer.lr: {choice: [0.002, 0.004]}
search: {algorithm: tpe, num_samples: 1}  # one trial on both cores: what is learned, not how it is searched
scheduler: {name: fifo}
"""


def test_mask_is_learned_from_real_faces(faces_data, tmp_path):
    (tmp_path / "faces.yaml").write_text(STUDY)
    here(tmp_path, "run", str(tmp_path / "faces.yaml"), "--data", str(faces_data / "train"))
    _, parent, children = runs_of(tmp_path, "faces")
    assert len(children) == 1
    assert parent.data.metrics["best_val_f1"] > 0.6  # chance is about 0.33

"""The lab augmentations: what they change, and that they keep the image a valid cell crop."""

import random

import numpy as np
import pytest
import torch

from marrowscope.augment import BackgroundTint, BlurOrJpeg, HEDJitter, ScaleJitter
from marrowscope.transforms import train_transform
from tests.conftest import synthetic_cell


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)


def test_hed_jitter_without_jitter_is_identity_and_with_it_changes_the_stain():
    im = synthetic_cell(3, 1, size=64)
    same = np.asarray(HEDJitter(sigma=0, bias=0, p=1)(im)).astype(int)
    assert np.abs(same - np.asarray(im).astype(int)).max() <= 2  # optical density round trip
    moved = np.asarray(HEDJitter(sigma=0.3, bias=0.1, p=1)(im)).astype(int)
    assert np.abs(moved - np.asarray(im).astype(int)).mean() > 3


def test_zoom_out_fills_with_the_mirrored_image_not_black():
    im = synthetic_cell(1, 2, size=80)
    out = ScaleJitter(zoom=(0.5, 0.5), p=1)(im)
    a = np.asarray(out)
    assert out.size == im.size and a.min(axis=2).max() > 100 and (a.sum(axis=2) < 30).mean() < 0.01


def test_zoom_in_keeps_the_size():
    im = synthetic_cell(1, 2, size=80)
    assert ScaleJitter(zoom=(1.5, 1.5), p=1)(im).size == im.size


def test_background_tint_leaves_the_stained_cell():
    im = synthetic_cell(0, 3, size=64)  # dark red disc on a light background
    out = np.asarray(BackgroundTint(strength=0.2, p=1)(im)).astype(int)
    a = np.asarray(im).astype(int)
    centre, corner = np.abs(out - a)[28:36, 28:36].mean(), np.abs(out - a)[:6, :6].mean()
    assert corner > centre


def test_blur_or_jpeg_keeps_size_and_mode():
    im = synthetic_cell(2, 4, size=64)
    for _ in range(10):
        out = BlurOrJpeg(p=1)(im)
        assert out.size == im.size and out.mode == "RGB"


def test_lab_recipe_gives_normalised_tensors():
    cfg = {"input_size": (3, 48, 48), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    t = train_transform(cfg, "lab")
    xs = torch.stack([t(synthetic_cell(k % 7, k, size=64)) for k in range(16)])
    assert xs.shape == (16, 3, 48, 48) and xs.min() >= -1 - 1e-5 and xs.max() <= 1 + 1e-5
    with pytest.raises(ValueError, match="augment"):
        train_transform(cfg, "heavy")

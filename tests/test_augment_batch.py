"""The lab recipe batched on the device gives the same distribution of outputs as the per-image
PIL recipe on the CPU (tested on the CPU: the batched code is the same on any device)."""

import random

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from marrowscope.fit.augment import unsharp
from marrowscope.fit.augment_batch import BatchLabAugment, _gaussian_blur
from marrowscope.fit.transforms import train_transform
from tests.conftest import synthetic_cell

SIZE = 64


def _stats(x: torch.Tensor) -> torch.Tensor:
    """Per image: mean of each channel (stain, tint, colour), contrast, and the share of dark pixels
    (how large the cell is in the frame: zoom and crop)."""
    means = x.mean((2, 3))
    dark = (x.mean(1) < 0.6).float().mean((1, 2))
    return torch.stack([means[:, 0], means[:, 1], means[:, 2], x.std((1, 2, 3)), dark], 1)


@pytest.fixture(scope="module")
def cells():
    ims = [synthetic_cell(i % 7, i, size=250) for i in range(64)]
    raw = torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in ims])
    return ims, raw


def _batched(raw, rounds=4, **kw):
    aug = BatchLabAugment(SIZE, (0, 0, 0), (1, 1, 1), **kw)
    return torch.cat([_stats(aug(raw)) for _ in range(rounds)])


def test_batched_and_per_image_recipes_agree(cells):
    ims, raw = cells
    torch.manual_seed(0)
    random.seed(0)
    per_image = train_transform({"input_size": (3, SIZE, SIZE), "mean": (0, 0, 0), "std": (1, 1, 1)}, "lab")
    pil = torch.cat([_stats(torch.stack([per_image(im) for im in ims])) for _ in range(4)])
    batched = _batched(raw)
    p_same = [ks_2samp(batched[:, i], pil[:, i]).pvalue for i in range(pil.shape[1])]
    assert min(p_same) > 0.01, p_same
    # the test can tell recipes apart: without stain and colour jitter, or with the zoom inverted, it fails
    no_colour = _batched(raw, color=0.0, saturation=0.0, hue=0.0, p_hed=0.0, p_tint=0.0)
    assert min(ks_2samp(no_colour[:, i], pil[:, i]).pvalue for i in range(3)) < 0.01
    inverted_zoom = _batched(raw, zoom=(1 / 1.25, 1 / 0.6))
    assert ks_2samp(inverted_zoom[:, 4], pil[:, 4]).pvalue < 0.01


def test_batched_output_shape_range_and_plain_view(cells):
    _, raw = cells
    aug = BatchLabAugment(SIZE, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    out = aug(raw[:8])
    assert out.shape == (8, 3, SIZE, SIZE) and out.dtype == torch.float32
    assert out.min() >= -1 - 1e-5 and out.max() <= 1 + 1e-5  # [0, 1] normalised by mean 0.5, std 0.5
    plain = aug.plain(raw[:2])
    assert torch.equal(plain, aug.plain(raw[:2]))  # validation view: no randomness
    assert not torch.equal(aug(raw[:2]), aug(raw[:2]))


def test_batched_focus_blurs_and_sharpens(cells):
    _, raw = cells
    x = raw[:16].float() / 255.0

    def lap_var(t):
        g = t.mean(1)
        return (4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]).var((1, 2))

    torch.manual_seed(0)
    sharpening = BatchLabAugment(SIZE, (0,) * 3, (1,) * 3, amount=(0.5, 2.0), p_focus_jpeg=1.0)
    ratios = lap_var(sharpening.focus_or_jpeg(x)) / lap_var(x)
    assert ratios.min() < 0.7 and ratios.max() > 1.3, ratios
    plain = lap_var(BatchLabAugment(SIZE, (0,) * 3, (1,) * 3, p_focus_jpeg=1.0).focus_or_jpeg(x)) / lap_var(x)
    assert plain.max() < 1.1, plain  # the lab recipe: blur or JPEG, never sharper
    # the same unsharp mask as the per-image recipe's: PIL's blend of its blur, within rounding
    ims = [synthetic_cell(i % 7, i, size=96) for i in range(8)]
    x = torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in ims]).float() / 255.0
    batched = (x + (x - _gaussian_blur(x, torch.full((8,), 1.0)))).clamp(0, 1) * 255
    pil = torch.stack([torch.from_numpy(np.asarray(unsharp(im, 1.0, 1.0)).copy()).permute(2, 0, 1)
                       for im in ims]).float()
    assert (batched - pil).abs().mean() < 1.0 < (x * 255 - pil).abs().mean()

"""The lab augmentations: what they change, and that they keep the image a valid cell crop."""

import random

import numpy as np
import pytest
import torch

from marrowscope.core.focus import laplacian_variance
from marrowscope.fit.augment import (
    BackgroundTint,
    ColourJitter,
    FocusOrJpeg,
    HEDJitter,
    ScaleJitter,
    colour_matrices,
)
from marrowscope.fit.transforms import train_transform
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


def test_focus_or_jpeg_blurs_and_sharpens():
    """Both directions of focus (lab-sharp): a recipe with blur only taught the model that
    crisper-than-usual detail means a blast (other-lab lymphocytes)."""
    im = synthetic_cell(2, 4, size=64)
    random.seed(0)
    outs = [FocusOrJpeg(amount=(0.5, 2.0), p=1)(im) for _ in range(30)]
    assert all(o.size == im.size and o.mode == "RGB" for o in outs)
    ratios = [laplacian_variance(o) / laplacian_variance(im) for o in outs]
    assert min(ratios) < 0.7 and max(ratios) > 1.3, ratios  # some blurred, some sharpened
    assert FocusOrJpeg(p=0)(im) is im
    # without an amount (the lab recipe): blur or JPEG only, nothing comes out crisper
    plain = [laplacian_variance(FocusOrJpeg(p=1)(im)) / laplacian_variance(im) for _ in range(30)]
    assert max(plain) < 1.1, plain


def test_lab_recipe_gives_normalised_tensors():
    cfg = {"input_size": (3, 48, 48), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    t = train_transform(cfg, "lab")
    xs = torch.stack([t(synthetic_cell(k % 7, k, size=64)) for k in range(16)])
    assert xs.shape == (16, 3, 48, 48) and xs.min() >= -1 - 1e-5 and xs.max() <= 1 + 1e-5
    with pytest.raises(ValueError, match="augment"):
        train_transform(cfg, "heavy")


def _mid_range_tensor(im) -> torch.Tensor:
    """The image squeezed into 0.25-0.75, so that no colour step clips and the maps can be compared."""
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255 * 0.5 + 0.25


def _apply(matrix, offset, x):
    gray = (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0).mean()
    return torch.einsum("cd,dhw->chw", torch.as_tensor(matrix, dtype=torch.float32), x) + float(offset) * gray


def test_colour_matrix_is_torchvisions_brightness_contrast_and_saturation_in_one_map():
    from torchvision.transforms.v2 import functional as TF

    x = _mid_range_tensor(synthetic_cell(3, 2, size=64))
    b, c, s = 1.1, 0.85, 1.2
    matrix, offset = colour_matrices(b, c, s, 0.0)
    expected = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x, b), c), s)
    assert torch.allclose(_apply(matrix[0], offset[0], x), expected, atol=1e-5)


def test_colour_matrix_hue_turns_as_torchvision_does_and_keeps_luma_and_gray():
    from torchvision.transforms.v2 import functional as TF

    x = _mid_range_tensor(synthetic_cell(5, 3, size=64))
    luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    for h in (0.05, -0.05):
        out = _apply(*(a[0] for a in colour_matrices(1.0, 1.0, 1.0, h)), x)
        assert torch.allclose((out * luma).sum(0), (x * luma).sum(0), atol=1e-5)  # luma kept
        # same direction as torchvision's HSV hue: the mean colour moves the same way
        shift, reference = (out - x).mean((1, 2)), (TF.adjust_hue(x, h) - x).mean((1, 2))
        assert torch.dot(shift, reference) > 0
    gray = torch.full((3, 4, 4), 0.4)
    assert torch.allclose(_apply(*(a[0] for a in colour_matrices(1.0, 1.0, 1.3, 0.08)), gray), gray, atol=1e-6)


def test_colour_jitter_draws_per_image_and_applies_its_matrix():
    im = synthetic_cell(2, 4, size=64)
    assert np.abs(np.asarray(ColourJitter(0, 0, 0, 0)(im), dtype=int) - np.asarray(im)).max() <= 1
    jitter = ColourJitter(0.25, 0.25, 0.35, 0.06)
    outs = [np.asarray(jitter(im), dtype=np.float32) for _ in range(8)]
    assert len({o.mean().round(2) for o in outs}) > 4  # every image its own draw
    random.seed(7)
    out = np.asarray(jitter(im), dtype=np.float32) / 255
    random.seed(7)
    factors = [random.uniform(1 - f, 1 + f) for f in (0.25, 0.25, 0.35)]
    matrix, offset = colour_matrices(*factors, random.uniform(-0.06, 0.06))
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255
    expected = _apply(matrix[0], offset[0], x).clamp(0, 1).permute(1, 2, 0).numpy()
    assert np.abs(out - expected).max() <= 1.5 / 255  # PIL's integer luma and rounding

"""Train and eval transforms from the model's data config."""

import numpy as np
import pytest
import torch
from PIL import Image

from marrowscope.core.preprocess import eval_split, eval_transform
from marrowscope.fit.transforms import RandomRot90, data_config_for, train_transform

CFG = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
       "crop_pct": 1.0, "crop_mode": "center"}


def _image(w=50, h=40, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_eval_transform_shape_range_and_determinism():
    x = eval_transform(CFG)(_image())
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert -1.0 - 1e-6 <= x.min() and x.max() <= 1.0 + 1e-6  # mean = std = 0.5: [0, 1] -> [-1, 1]
    assert torch.equal(x, eval_transform(CFG)(_image()))


def test_eval_geometry_is_resize_then_centre_crop():
    im = _image(64, 32)  # short side already 32: the resize keeps it, the crop takes the middle
    out = eval_split(CFG)[0](im)
    assert out.size == (32, 32)
    assert np.array_equal(np.asarray(out), np.asarray(im)[:, 16:48])


@pytest.mark.parametrize("interpolation, crop_pct, size", [("bicubic", 1.0, 32), ("bilinear", 1.0, 32),
                                                            ("bicubic", 0.875, 32), ("bicubic", 1.0, 224)])
def test_eval_split_gives_timms_eval_transform_numbers_exactly(interpolation, crop_pct, size):
    """The PIL and numpy path that predict takes (no torch) against timm's own eval transform."""
    from marrowscope.core.preprocess import EvalGeometry, NormalisedArray

    cfg = {**CFG, "input_size": (3, size, size), "interpolation": interpolation, "crop_pct": crop_pct,
           "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}  # not 0.5: order matters
    geometry, rest = eval_split(cfg)
    assert isinstance(geometry, EvalGeometry) and isinstance(rest, NormalisedArray)
    for seed, (w, h) in enumerate([(50, 40), (40, 50), (41, 77), (250, 250), (size, size), (301, 257)]):
        im = _image(w, h, seed)
        x = rest(geometry(im))
        assert x.dtype == np.float32 and x.flags.c_contiguous
        assert np.array_equal(x, eval_transform(cfg)(im).numpy()), (w, h)  # bit for bit, not close


def test_train_transform_augments_but_keeps_shape():
    t = train_transform(CFG)
    torch.manual_seed(0)
    a, b = t(_image()), t(_image())
    assert a.shape == b.shape == (3, 32, 32)
    assert not torch.equal(a, b)  # random crops, flips, turns and colour


def test_rot90_is_exact():
    im = _image(20, 20)
    outs = {RandomRot90()(im).tobytes() for _ in range(64)}
    turns = {im.rotate(90 * k).tobytes() for k in range(4)}
    assert outs <= turns and len(outs) > 1


def test_data_config_follows_the_network():
    import timm

    net = timm.create_model("test_efficientnet", num_classes=3)
    cfg = data_config_for(net, 48)
    assert cfg["input_size"] == (3, 48, 48) and cfg["crop_pct"] == 1.0 and len(cfg["mean"]) == 3

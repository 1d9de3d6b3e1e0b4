"""Physical scale: red cells give the pixel size; images are brought to the training scale and field."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.preprocess import Preprocess
from marrowscope.core.scale import RED_CELL_UM, ToTrainingScale, estimate_pixel_size, red_cell_diameters
from tests.conftest import synthetic_cell


def smear(side: int = 360, diameter: int = 70, cells: int = 5, seed: int = 0) -> Image.Image:
    """Beige plasma with pink red cells (with a pale centre) of one diameter and a purple white cell."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (side, side), (238, 226, 214))
    d = ImageDraw.Draw(im)
    centres = [(side * 0.25, side * 0.25), (side * 0.75, side * 0.25), (side * 0.25, side * 0.75),
               (side * 0.75, side * 0.75), (side * 0.5, side * 0.12)][:cells]
    for cx, cy in centres:
        r = diameter / 2
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(205, 150, 160))
        d.ellipse((cx - r / 3, cy - r / 3, cx + r / 3, cy + r / 3), fill=(222, 185, 190))  # central pallor
    d.ellipse((side / 2 - 40, side / 2 - 40, side / 2 + 40, side / 2 + 40), fill=(90, 50, 140))
    a = np.asarray(im, dtype=np.float32) + rng.normal(0, 3, (side, side, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("diameter", [60, 80, 110])
def test_red_cells_give_the_pixel_size(diameter):
    um, n = estimate_pixel_size(smear(diameter=diameter, side=max(360, 4 * diameter)))
    assert n >= 2 and um == pytest.approx(RED_CELL_UM / diameter, rel=0.08)
    assert all(abs(d - diameter) < 0.1 * diameter for d in red_cell_diameters(smear(diameter=diameter,
                                                                                    side=max(360, 4 * diameter))))


@pytest.mark.parametrize("image", [
    synthetic_cell(2, 1, size=250),                     # a marrow-like crop: no red cells
    Image.new("L", (300, 300), 128).convert("RGB"),    # grayscale, featureless
    Image.new("RGB", (1, 1), (200, 100, 100)),          # tiny
    smear(cells=1),                                     # one red cell is not enough to trust
    Image.new("RGB", (5000, 4000), (235, 225, 215)),    # huge and empty
], ids=["no-red-cells", "grayscale", "tiny", "one-red-cell", "huge"])
def test_without_red_cells_the_training_scale_is_assumed_and_said(image):
    out, scale = ToTrainingScale(0.1, 250)(image)
    assert out.size == (250, 250)
    assert scale.pixel_size_um == 0.1 and "assumed" in scale.source


def test_resampled_to_the_training_scale_and_field():
    # an image at 0.05 um/px (twice the magnification of training at 0.1): its central 200 px
    # are the training field of 100 px
    a = np.full((400, 400, 3), 230, np.uint8)
    a[150:250, 150:250] = (120, 40, 160)  # a 100 px (5 um) square in the middle
    out, scale = ToTrainingScale(0.1, 100, given_um=0.05)(Image.fromarray(a))
    assert out.size == (100, 100) and scale.source == "given"
    dark = (np.asarray(out)[..., 1] < 100)
    assert 40 <= dark.sum(axis=1).max() <= 60  # the square is now 50 px: half the field


def test_smaller_images_are_mirrored_out_not_stretched():
    im = synthetic_cell(0, 1, size=120)
    out, _ = ToTrainingScale(0.1, 250, given_um=0.1)(im)
    assert out.size == (250, 250)
    assert np.array_equal(np.asarray(out)[65:185, 65:185], np.asarray(im))  # the original, unscaled, centred


def test_pixel_size_needs_a_measured_model_and_a_plausible_value():
    cfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    with pytest.raises(MarrowscopeError, match="records no training pixel size"):
        Preprocess(cfg, None, pixel_size=0.1)
    with pytest.raises(MarrowscopeError, match="outside"):
        Preprocess(cfg, {"pixel_size_um": 0.1, "field_px": 250}, pixel_size=25)
    x, scale, blur = Preprocess(cfg, {"pixel_size_um": 0.1, "field_px": 250})(smear())
    assert x.shape == (3, 32, 32) and "red cells" in scale.source and blur is None  # no focus settings

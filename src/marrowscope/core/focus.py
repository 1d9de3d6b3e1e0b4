"""Focus that means the same everywhere: an input crisper than nearly all of the model's training
images is softened, at the network's own resolution, to their usual sharpness before it is classified.

Why: another lab's analyser images are far crisper than bone-marrow-7's, and the network reads
crisp blood lymphocytes as blasts (README, "What still throws the model off": blurring the other
lab's images by 1 px raised the bundled model's lymphocyte recall from 0.45 to 0.60, sharpening
them lowered it to 0.20). Softening can only remove detail the training images never had, so the
model meets inputs like those it learnt from; images within the training range pass unchanged.

Sharpness here is the variance of the Laplacian of the gray image divided by the variance of the
gray image: the share of its contrast at the finest scale. Dividing makes it independent of
contrast and brightness (the plain Laplacian variance grows with contrast, which the network
copes with). Measured on the bundled model's view: median 0.0115 over bone-marrow-7's training
images, 95th percentile 0.0252 (``marrowscope fit-checks``); other-lab-pbc's first 20 images per
class, median 0.0355 (``experiments/lab_sensitivity.py``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageFilter, ImageStat

# The share of the training images left as they are; above it, an input is softened to their median.
KEEP_QUANTILE = 95
MIN_SIGMA, MAX_SIGMA = 0.05, 3.0  # px; 3 px takes any crop below the training median
STEPS = 3  # measurements of how the image's sharpness falls with blur


def laplacian_variance(im: Image.Image) -> float:
    """How crisp an image is: the variance of the 4-neighbour Laplacian of its gray pixels (it also
    grows with contrast). Also the measure behind the training augmentation's sharpening."""
    g = np.asarray(im.convert("L"), dtype=np.float64)
    return float((4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]).var())


def sharpness(image: Image.Image) -> float:
    """Laplacian variance over gray variance of an RGB or gray image (0 for a flat one)."""
    var = ImageStat.Stat(image.convert("L")).var[0]
    return laplacian_variance(image) / var if var > 1e-6 else 0.0


class MatchFocus:
    """PIL image at the network's input size -> (the image, the Gaussian blur in px it was given;
    0.0 when it was left alone)."""

    def __init__(self, median: float, above: float):
        self.median, self.above = float(median), float(above)

    @classmethod
    def from_settings(cls, settings: Optional[dict]) -> Optional["MatchFocus"]:
        """From a model folder's ``marrowscope.core.focus`` settings; None where it has none, or where its
        training images had no measurable detail (flat images: nothing to match)."""
        if not settings or not {"median", "above"} <= set(settings) or settings["median"] <= 0:
            return None
        return cls(settings["median"], settings["above"])

    def __call__(self, image: Image.Image) -> tuple[Image.Image, float]:
        gray = image.convert("L")  # the blur is found on one channel, not three: a third of the time
        start = sharpness(gray)
        if start <= self.above:
            return image, 0.0
        # A Gaussian blur of sigma lowers sharpness about as s0 / (1 + k sigma^2): k is measured at a
        # first guess, then again at each blur it points to. On the 80 crisp ones of every fifth
        # other-lab-pbc image this reached 0.0106-0.0124 (5-95%) for a median of 0.0115, in 4.8 ms per
        # image; a 6-step bisection took 9 ms (each blur costs about 1 ms). Two steps missed by 70%
        # on synthetic cells.
        sigma = 1.0
        for _ in range(STEPS):
            blurred = max(sharpness(gray.filter(ImageFilter.GaussianBlur(sigma))), 1e-12)
            k = max(start / blurred - 1, 1e-6) / sigma ** 2
            sigma = float(np.clip(np.sqrt(max(start / self.median - 1, 0.0) / k), MIN_SIGMA, MAX_SIGMA))
        return image.filter(ImageFilter.GaussianBlur(sigma)), sigma


def measure(views: Sequence[Image.Image]) -> Optional[dict]:
    """A model's focus settings from its training images as the network sees them (after the scale
    step, resize and crop); None without any image."""
    values = np.array([sharpness(v) for v in views])
    if not len(values):
        return None
    median, above = np.percentile(values, [50, KEEP_QUANTILE])
    return {"median": round(float(median), 5), "above": round(float(above), 5),
            "how": f"sharpness (Laplacian variance / gray variance) of {len(values)} training images at the "
                   f"network's input: median {median:.4f}, {KEEP_QUANTILE}th percentile {above:.4f}; inputs above "
                   "that are blurred to the median"}

"""Augmentations that teach the network what changes between laboratories: stain, background,
magnification, focus and compression. Each takes and returns an RGB PIL image.

Why each: stain batches and protocols shift haematoxylin/eosin-like absorbance (HED jitter);
plasma and marrow backgrounds differ in tint (background tint); labs image at other
magnifications, so a cell is zoomed in and out, with the frame filled by mirrored surroundings
rather than black (scale jitter); focus, optics and JPEG settings vary between scanners (blur
and JPEG; sharpening too in ``lab-sharp``).
Brightness, contrast, saturation and hue (:class:`ColourJitter`, also in the light recipe) are one
affine map of RGB per image, built by :func:`colour_matrices` for this PIL path and for the batched
one (:mod:`marrowscope.fit.augment_batch`) alike.
"""

from __future__ import annotations

import io
import random
from typing import Optional

import numpy as np
from PIL import Image, ImageFilter, ImageStat

# Ruifrok & Johnston's stain vectors (haematoxylin, eosin, DAB), rows of optical density per RGB channel.
_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED /= np.linalg.norm(_HED, axis=1, keepdims=True)
_HED_INV = np.linalg.inv(_HED)
# Luma weights (ITU-R 601: PIL's "L" and torchvision's grayscale use the same) and YIQ, whose I-Q
# plane holds hue: turning it shifts hue and keeps luma. Gray (1, 1, 1) maps to (1, 0, 0) in YIQ.
_GRAY = np.array([0.299, 0.587, 0.114])
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = np.linalg.inv(_YIQ)


def colour_matrices(brightness, contrast, saturation, hue) -> tuple[np.ndarray, np.ndarray]:
    """Per image, its colour jitter as one affine map of RGB in 0-1, from [N] factors in ColorJitter's
    order and meaning: (matrices [N, 3, 3], offsets [N]); image i maps each pixel p to
    ``matrices[i] @ p + offsets[i] * gray_i`` on every channel, where gray_i is the image's mean
    gray (luma) before the jitter.

    Brightness scales; contrast blends with the image's mean gray (after brightness); saturation
    blends each pixel with its own gray; hue turns the I-Q plane of YIQ by ``hue`` turns (0.04: 14
    degrees, the same direction as torchvision's hue). Saturation and hue keep gray gray, so
    contrast's offset passes through them unchanged. One map instead of four passes: torchvision's
    ColorJitter (its hue step an HSV round trip) cost 3.8 ms per 224-px image on this CPU; this
    0.7 ms. Unlike ColorJitter the order is fixed and values are clipped once, at the end.
    """
    b, c, s, h = (np.asarray(v, dtype=np.float64).reshape(-1, 1, 1) for v in (brightness, contrast, saturation, hue))
    angle = -2 * np.pi * h[:, 0, 0]  # YIQ's positive turn is torchvision's negative hue
    turn = np.zeros((len(angle), 3, 3))
    turn[:, 0, 0] = 1
    cos, sin = np.cos(angle), np.sin(angle)
    turn[:, 1, 1], turn[:, 1, 2], turn[:, 2, 1], turn[:, 2, 2] = cos, -sin, sin, cos
    sat = s * np.eye(3) + (1 - s) * _GRAY  # (1 - s) times every row's pixel gray
    return _YIQ_INV @ turn @ _YIQ @ sat * (b * c), ((1 - c) * b)[:, 0, 0]


def recolour(im: Image.Image, brightness: float, contrast: float, saturation: float, hue: float) -> Image.Image:
    """One image through :func:`colour_matrices` with the given factors, applied by PIL in one pass."""
    matrix, offset = colour_matrices(brightness, contrast, saturation, hue)
    gray = ImageStat.Stat(im.convert("L")).mean[0]  # in pixel values, as PIL's offsets are
    rows = np.concatenate([matrix[0], np.full((3, 1), offset[0] * gray)], 1)
    return im.convert("RGB", tuple(rows.flatten().tolist()))  # rounds and clips to 0-255


def unsharp(im: Image.Image, sigma: float, amount: float) -> Image.Image:
    """im + amount * (im - its Gaussian blur of ``sigma`` px): PIL's blend extrapolates past im and clips."""
    return Image.blend(im.filter(ImageFilter.GaussianBlur(sigma)), im, 1 + amount)


def jpeg_round_trip(im: Image.Image, quality: int) -> Image.Image:
    """The image as a JPEG of ``quality`` would show it."""
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


class ColourJitter:
    """Brightness, contrast and saturation factors drawn from [1 - x, 1 + x] and a hue turn from
    [-hue, hue], per image, applied as one colour matrix (:func:`colour_matrices`) by PIL."""

    def __init__(self, brightness: float = 0.25, contrast: float = 0.25, saturation: float = 0.25,
                 hue: float = 0.04):
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def __call__(self, im: Image.Image) -> Image.Image:
        factors = [random.uniform(1 - x, 1 + x) for x in (self.brightness, self.contrast, self.saturation)]
        return recolour(im, *factors, random.uniform(-self.hue, self.hue))


class HEDJitter:
    """Scale and shift each stain's optical density (Tellez et al., 2018)."""

    def __init__(self, sigma: float = 0.08, bias: float = 0.05, p: float = 0.8):
        self.sigma, self.bias, self.p = sigma, bias, p

    def __call__(self, im: Image.Image) -> Image.Image:
        if random.random() > self.p:
            return im
        rgb = np.asarray(im, dtype=np.float32) / 255.0
        od = -np.log(np.clip(rgb, 1 / 255, 1))
        stains = od.reshape(-1, 3) @ _HED_INV
        alpha = np.array([random.uniform(1 - self.sigma, 1 + self.sigma) for _ in range(3)], np.float32)
        beta = np.array([random.uniform(-self.bias, self.bias) for _ in range(3)], np.float32)
        od = (stains * alpha + beta) @ _HED
        out = np.exp(-od).reshape(rgb.shape)
        return Image.fromarray(np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8))


class BackgroundTint:
    """Tint the bright (unstained) part of the image: bluish marrow or beige plasma backgrounds."""

    def __init__(self, strength: float = 0.1, p: float = 0.5):
        self.strength, self.p = strength, p

    def __call__(self, im: Image.Image) -> Image.Image:
        if random.random() > self.p:
            return im
        a = np.asarray(im, dtype=np.float32)
        bright = np.clip((a.mean(axis=2, keepdims=True) - 150) / 80, 0, 1)  # 0 on stained cells, 1 on background
        tint = np.array([random.uniform(-self.strength, self.strength) for _ in range(3)], np.float32) * 255
        return Image.fromarray(np.clip(a + bright * tint, 0, 255).astype(np.uint8))


class ScaleJitter:
    """Zoom the whole image by a factor in ``zoom`` about its centre, keeping its size: zooming out
    fills the frame with the mirrored surroundings (as a wider field of view would show), not black."""

    def __init__(self, zoom: tuple[float, float] = (0.7, 1.3), p: float = 0.8):
        self.zoom, self.p = zoom, p

    def __call__(self, im: Image.Image) -> Image.Image:
        if random.random() > self.p:
            return im
        z = float(np.exp(random.uniform(np.log(self.zoom[0]), np.log(self.zoom[1]))))
        w, h = im.size
        small = im.resize((max(1, round(w * z)), max(1, round(h * z))), Image.BICUBIC)
        if z >= 1:
            left, top = (small.width - w) // 2, (small.height - h) // 2
            return small.crop((left, top, left + w, top + h))
        a = np.asarray(small)
        py, px = h - small.height, w - small.width
        a = np.pad(a, ((py // 2, py - py // 2), (px // 2, px - px // 2), (0, 0)), mode="reflect")
        return Image.fromarray(a)


def focus_settings(sharpen: bool) -> dict:
    """:class:`FocusOrJpeg`'s amount and share of images, as the ``lab`` recipe (blur or JPEG, a fifth of the
    images each) and ``lab-sharp`` (also an unsharp mask for another fifth) use them, per image and batched."""
    return {"amount": (0.5, 2.0), "p": 0.6} if sharpen else {"amount": None, "p": 0.4}


class FocusOrJpeg:
    """Defocus (Gaussian blur), crisper optics (an unsharp mask, when ``amount`` is given) or JPEG
    re-compression at a random quality; ``p`` of the images in all, in equal shares.

    Why sharpening (the ``lab-sharp`` recipe): the other lab's analyser images are crisper than
    bone-marrow-7's (at the network's input the Laplacian's variance has a median of 98 on other-lab-pbc
    against 32), and a model that only ever saw blur read crisp blood lymphocytes as blasts: sharpening
    them sent 13 of 20 to BLA, blurring them left 1 there (``experiments/lab_sensitivity.py``, where sigma
    1 px and amount 1 raise the Laplacian's variance 2.2x).
    """

    def __init__(self, blur: tuple[float, float] = (0.3, 1.5), amount: Optional[tuple[float, float]] = None,
                 quality: tuple[int, int] = (30, 90), p: float = 0.4):
        self.blur, self.amount, self.quality, self.p = blur, amount, quality, p

    def __call__(self, im: Image.Image) -> Image.Image:
        r = random.random()
        share = self.p / (3 if self.amount else 2)
        if r < share:
            return im.filter(ImageFilter.GaussianBlur(random.uniform(*self.blur)))
        if self.amount and r < 2 * share:
            return unsharp(im, random.uniform(*self.blur), random.uniform(*self.amount))
        if r < self.p:
            return jpeg_round_trip(im, random.randint(*self.quality))
        return im

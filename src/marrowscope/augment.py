"""Augmentations that teach the network what changes between laboratories: stain, background,
magnification, focus and compression. Each takes and returns an RGB PIL image.

Why each: stain batches and protocols shift haematoxylin/eosin-like absorbance (HED jitter);
plasma and marrow backgrounds differ in tint (background tint); labs image at other
magnifications, so a cell is zoomed in and out, with the frame filled by mirrored surroundings
rather than black (scale jitter); focus and JPEG settings vary between scanners (blur, JPEG).
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image, ImageFilter

# Ruifrok & Johnston's stain vectors (haematoxylin, eosin, DAB), rows of optical density per RGB channel.
_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED /= np.linalg.norm(_HED, axis=1, keepdims=True)
_HED_INV = np.linalg.inv(_HED)


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


class BlurOrJpeg:
    """Defocus (Gaussian blur) or JPEG re-compression at a random quality."""

    def __init__(self, blur: tuple[float, float] = (0.3, 1.5), quality: tuple[int, int] = (30, 90), p: float = 0.4):
        self.blur, self.quality, self.p = blur, quality, p

    def __call__(self, im: Image.Image) -> Image.Image:
        r = random.random()
        if r < self.p / 2:
            return im.filter(ImageFilter.GaussianBlur(random.uniform(*self.blur)))
        if r < self.p:
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=random.randint(*self.quality))
            return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        return im

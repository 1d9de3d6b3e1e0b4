"""Physical scale: the network sees every cell at the micrometres per pixel of its training images,
over the same field of view, whatever camera or magnification took the picture.

Cell size is itself a clue (lymphocytes are small, monocytes and blasts large), so images are not
stretched to fill the frame. Instead each image's pixel size is estimated from its red blood cells,
which measure about 7.5 µm in any lab; the image is resampled to the training pixel size and the
central field of the training crops' size (in µm) is taken, mirrored out where the image is smaller.
Where no red cells are found (marrow crops rarely show a whole one), the training images' own scale
is assumed and the result says so; a user who knows the scale passes it (``--pixel-size``).

Measured (``marrowscope fit-checks --only scale``): 8 whole red cells in 8 of the 2,975 training and validation
crops of bone-marrow-7, median diameter 79 px (0.095 µm/px); other-lab-pbc, an estimate in 81 of the
first 100 images (20 per class), median 0.100 µm/px (5-95%: 0.090-0.109).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from marrowscope.core.errors import ImageDecodeError
from marrowscope.core.images import decode_image

RED_CELL_UM = 7.5
ASSUMED = "assumed: as the training images (no red cells found)"
LAB_POOLED = "the lab's, pooled over its folder (no red cells in this image)"
# A red cell of 50 to 250 px: pixel sizes from 0.03 to 0.15 µm (oil objectives of about 100x to 40x).
# Smaller round blobs are mostly granules and platelet clumps (in bone-marrow-7, 5 of 13 detections
# were 31-44 px against 67-85 px for the rest); below 40x, pass --pixel-size.
RED_CELL_PX = (50.0, 250.0)
ESTIMATE_SIDE = 128  # red cells are found on a copy of about this size: about 3 ms per image


@dataclass(frozen=True)
class Scale:
    """How one image was brought to the training scale: its pixel size and where that came from."""

    pixel_size_um: float
    source: str  # "red cells (N)", "given", or "assumed (no red cells found)"

    def __str__(self) -> str:
        return f"{self.pixel_size_um:.3f} µm/px, {self.source}"


def red_cell_diameters(image: Image.Image) -> list[float]:
    """Diameters (px, in ``image``'s pixels) of whole, round, unnucleated pink discs: red cells.

    Red cells absorb green (haemoglobin) and are redder than blue; nuclei and blue cytoplasm are
    bluer than red. Discs touching the border, elongated or ragged blobs are left out.
    """
    from scipy import ndimage as ndi

    f = min(1.0, ESTIMATE_SIDE / max(image.size))
    small = image if f == 1.0 else image.resize((max(1, round(image.width * f)), max(1, round(image.height * f))),
                                                Image.BILINEAR)
    a = np.asarray(small, dtype=np.float32)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    mask = ndi.binary_fill_holes((g < np.percentile(g, 97) - 25) & (r > b + 5))  # fills the central pallor
    mask = ndi.binary_opening(mask, iterations=max(1, round(2 * f)))
    labels, _ = ndi.label(mask)
    h_img, w_img = mask.shape
    out = []
    for i, (ys, xs) in enumerate(ndi.find_objects(labels), 1):
        h, w = ys.stop - ys.start, xs.stop - xs.start
        if ys.start == 0 or xs.start == 0 or ys.stop == h_img or xs.stop == w_img or max(h, w) > 1.35 * min(h, w):
            continue
        area = float((labels[ys, xs] == i).sum())
        if 0.62 <= area / (h * w) <= 0.88:  # a disc fills pi/4 of its box
            out.append(float(np.sqrt(4 * area / np.pi)) / f)
    return [d for d in out if RED_CELL_PX[0] <= d <= RED_CELL_PX[1]]


def estimate_pixel_size(image: Image.Image) -> tuple[Optional[float], int]:
    """(µm per pixel, red cells used), or (None, found) without two red cells that agree within 25%."""
    return pixel_size_from(red_cell_diameters(image))


def pixel_size_from(d: Sequence[float]) -> tuple[Optional[float], int]:
    """:func:`estimate_pixel_size` of red-cell diameters already measured (a large frame pools its windows')."""
    if len(d) < 2:
        return None, len(d)
    med = float(np.median(d))
    agree = [x for x in d if abs(x - med) <= 0.25 * med]
    return (RED_CELL_UM / float(np.median(agree)), len(agree)) if len(agree) >= 2 else (None, len(d))


class ToTrainingScale:
    """PIL image -> (the central training-sized field at the training pixel size, its :class:`Scale`).

    Args:
        pixel_size_um: the training images' pixel size.
        field_px: the side of the training crops, in their pixels.
        given_um: the input's pixel size when the user knows it (skips the estimate).
        zoom: the cell drawn this much larger (above 1) or smaller than at the training scale, over a field
            as many pixels wide (a second reading, :meth:`marrowscope.core.predict.Predictor.read_again`).
        lab_um: the pixel size of images without an estimate of their own (a lab's, pooled over its
            folder by ``adapt --unlabelled``); else the training images' is assumed.
    """

    def __init__(self, pixel_size_um: float, field_px: int, given_um: Optional[float] = None, zoom: float = 1.0,
                 lab_um: Optional[float] = None):
        self.pixel_size_um, self.field_px, self.given_um, self.zoom = pixel_size_um, int(field_px), given_um, zoom
        self.lab_um = lab_um

    def __call__(self, image: Image.Image) -> tuple[Image.Image, Scale]:
        scale = self.scale_of(image)
        factor = self.zoom * scale.pixel_size_um / self.pixel_size_um  # input pixels -> training pixels
        # crop the source window first, so the work stays at the field's size whatever the input's
        window = self.field_px / factor
        cx, cy = image.width / 2, image.height / 2
        box = (max(0, round(cx - window / 2)), max(0, round(cy - window / 2)),
               min(image.width, round(cx + window / 2)), min(image.height, round(cy + window / 2)))
        part = image.crop(box)
        size = (max(1, round(part.width * factor)), max(1, round(part.height * factor)))
        part = part.resize(size, Image.BICUBIC) if size != part.size else part
        return _mirror_to(part, self.field_px), scale

    def scale_of(self, image: Image.Image) -> Scale:
        if self.given_um:
            return Scale(self.given_um, "given")
        um, n = estimate_pixel_size(image)
        if um is None and self.lab_um:
            return Scale(self.lab_um, LAB_POOLED)
        if um is None:
            return Scale(self.pixel_size_um, ASSUMED)
        return Scale(um, f"from {n} red cells")


def _mirror_to(image: Image.Image, side: int) -> Image.Image:
    """Centre ``image`` in a side x side frame, the missing margin filled with its mirror image."""
    if image.size == (side, side):
        return image
    a = np.asarray(image)
    py, px = max(0, side - a.shape[0]), max(0, side - a.shape[1])
    if py or px:  # reflect needs a margin smaller than the image: repeat for tiny images
        mode = "reflect" if py < a.shape[0] and px < a.shape[1] else "symmetric"
        a = np.pad(a, ((py // 2, py - py // 2), (px // 2, px - px // 2), (0, 0)), mode=mode)
        if a.shape[0] < side or a.shape[1] < side:
            a = np.asarray(Image.fromarray(a).resize((side, side), Image.BICUBIC))
    top, left = (a.shape[0] - side) // 2, (a.shape[1] - side) // 2
    return Image.fromarray(np.ascontiguousarray(a[top: top + side, left: left + side]))


def measure(paths: Sequence) -> Optional[dict]:
    """The training scale of a model from its training images' whole red cells: pixel size, the
    usual side of the crops (the field), and how it was measured; None without any red cell."""
    diameters, with_cells, sides = [], 0, Counter()
    for path in paths:
        try:
            image = decode_image(path)
        except ImageDecodeError:
            continue
        d = red_cell_diameters(image)
        diameters += d
        with_cells += bool(d)
        sides[max(image.size)] += 1
    if not diameters:
        return None
    median, side = float(np.median(diameters)), sides.most_common(1)[0][0]
    return {"pixel_size_um": round(RED_CELL_UM / median, 4), "field_px": side,
            "how": f"median diameter {median:.1f} px of {len(diameters)} whole red cells ({RED_CELL_UM} um) in "
                   f"{with_cells} of {sum(sides.values())} training and validation images; field: their usual side, "
                   f"{side} px"}

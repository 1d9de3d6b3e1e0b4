"""Do two labs' cells come out the same size at the pixel sizes marrowscope uses for them?

A check of the scale step (:mod:`marrowscope.core.scale`) that needs no classifier: the same cell type
should measure about the same in micrometres in any lab. For each class folder present in both sets,
the central stained region (the pixels darker in red than the image's Otsu threshold: nucleus and
dense cytoplasm, joined by a small closing; the components whose centre lies within 18% of the side
from the image centre) is measured as the diameter of a disc of the same area, in pixels times each
image's pixel size (red cells where found, else the training scale, as the Predictor does).

    python experiments/compare_cell_sizes.py ../shared/data/bone-marrow-7 ../shared/data/other-lab-pbc \
        --model models/default [--per-class 60]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from marrowscope.core.images import decode_image
from marrowscope.core.scale import estimate_pixel_size


def otsu(values: np.ndarray) -> float:
    hist, _ = np.histogram(values, 256, (0, 256))
    p = hist / hist.sum()
    w, m = np.cumsum(p), np.cumsum(p * np.arange(256))
    between = (m[-1] * w - m) ** 2 / (w * (1 - w) + 1e-12)
    return float(np.argmax(between))


def central_diameter_px(rgb: np.ndarray) -> float:
    """Equivalent diameter (px) of the dark central region, NaN when there is none."""
    red = rgb[..., 0].astype(np.float32)
    mask = ndi.binary_closing(ndi.binary_opening(red < otsu(red), iterations=2), iterations=3)
    labels, _ = ndi.label(mask)
    h, w = red.shape
    area = 0
    for i, box in enumerate(ndi.find_objects(labels), 1):
        ys, xs = np.nonzero(labels[box] == i)
        cy, cx = ys.mean() + box[0].start, xs.mean() + box[1].start
        if len(ys) > 50 and np.hypot(cy - h / 2, cx - w / 2) < 0.18 * min(h, w):
            area += len(ys)
    return float(np.sqrt(4 * area / np.pi)) if area else float("nan")


def sizes_um(folder: Path, per_class: int, training_um: float) -> dict:
    out = {}
    for cls in sorted(p.name for p in folder.iterdir() if p.is_dir()):
        values = []
        for f in sorted((folder / cls).iterdir())[:per_class]:
            image = decode_image(f)
            um = estimate_pixel_size(image)[0] or training_um
            values.append(central_diameter_px(np.asarray(image)) * um)
        out[cls] = np.array(values)
    return out


def main() -> None:
    import json

    ap = argparse.ArgumentParser()
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--model", default="models/default", help="model folder whose training scale is assumed")
    ap.add_argument("--per-class", type=int, default=60, help="first N images of each class by file name")
    a = ap.parse_args()
    cfg = json.loads((Path(a.model) / "config.json").read_text())["marrowscope"]
    training_um = float(cfg["scale"]["pixel_size_um"])
    one, two = (sizes_um(Path(d), a.per_class, training_um) for d in (a.first, a.second))
    print(f"training scale {training_um:.4f} µm/px; median diameter (µm) of the central stained region")
    print(f"{'class':6s} {Path(a.first).name:>16s} {Path(a.second).name:>16s}  ratio")
    for cls in sorted(set(one) & set(two)):
        m1, m2 = np.nanmedian(one[cls]), np.nanmedian(two[cls])
        print(f"{cls:6s} {m1:16.2f} {m2:16.2f}  {m2 / m1:.3f}")


if __name__ == "__main__":
    main()

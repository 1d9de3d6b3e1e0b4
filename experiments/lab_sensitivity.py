"""What about another lab's images throws a model off: its accuracy on them after one change each
(focus, colour, hue, compression), with no retraining. A change that raises accuracy points at a
difference between the labs that the training recipe should teach the model to ignore. Sharpness:
the median variance of the Laplacian of the image at the network's input size, and the same divided by
the gray variance (:func:`marrowscope.core.focus.sharpness`), before any focus matching; beside those of the
model's own test images. Accuracy is with the model's whole preprocessing, focus matching included
where its folder has it.

    python experiments/lab_sensitivity.py --model models/default [--data ../shared/data/other-lab-pbc] [--per-class 20]

Images: the first ``--per-class`` files of each class folder by sorted name, i.e. the adaptation
split of other-lab-pbc (its README), so that the images the figures are reported on stay unlooked-at.
This is how the sharpening step of the ``lab`` recipe was found (README, "Other labs").
"""

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import ImageEnhance, ImageFilter

from marrowscope.core.errors import ImageDecodeError, MarrowscopeError
from marrowscope.core.focus import sharpness as focus_sharpness
from marrowscope.core.images import decode_image, is_image_path
from marrowscope.core.predict import Predictor
from marrowscope.fit.augment import jpeg_round_trip, laplacian_variance, recolour, unsharp

CHANGES = {
    "none": lambda im: im,
    "blur 1.0": lambda im: im.filter(ImageFilter.GaussianBlur(1.0)),
    "sharpen 1.0x1.0": lambda im: unsharp(im, 1.0, 1.0),
    "saturation 0.6": lambda im: ImageEnhance.Color(im).enhance(0.6),
    "saturation 1.4": lambda im: ImageEnhance.Color(im).enhance(1.4),
    "brightness 0.85": lambda im: ImageEnhance.Brightness(im).enhance(0.85),
    "brightness 1.15": lambda im: ImageEnhance.Brightness(im).enhance(1.15),
    "contrast 0.8": lambda im: ImageEnhance.Contrast(im).enhance(0.8),
    "contrast 1.25": lambda im: ImageEnhance.Contrast(im).enhance(1.25),
    "hue -0.1": lambda im: recolour(im, 1, 1, 1, -0.1),
    "hue -0.05": lambda im: recolour(im, 1, 1, 1, -0.05),
    "hue +0.05": lambda im: recolour(im, 1, 1, 1, 0.05),
    "hue +0.1": lambda im: recolour(im, 1, 1, 1, 0.1),
    "jpeg 40": lambda im: jpeg_round_trip(im, 40),
}


def sharpness(p: Predictor, images) -> tuple[float, float]:
    """Medians over images of the variance of the 4-neighbour Laplacian of the gray image at the
    network's input size (after the scale step, before focus matching), and of that over the gray
    variance: how crisp a set of images is, where the model reads it."""
    views = [p.preprocess.to_input_size(im)[0] for im in images]
    return (float(np.median([laplacian_variance(v) for v in views])),
            float(np.median([focus_sharpness(v) for v in views])))


def own_test_images(p: Predictor, every: int = 5) -> list:
    """Every ``every``-th test image of the model folder's manifest, where it has one and they are there."""
    from marrowscope.core.manifest import read_manifest

    try:
        test = [s for s in read_manifest(p.model_dir / "manifest.csv") if s.split == "test"][::every]
        return [decode_image(s.path) for s in test]
    except (MarrowscopeError, OSError):
        return []


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/default")
    ap.add_argument("--data", default="../shared/data/other-lab-pbc")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--changes", nargs="*", default=list(CHANGES), choices=list(CHANGES))
    a = ap.parse_args(argv)
    p = Predictor(a.model)
    folders = sorted(d for d in Path(a.data).iterdir() if d.is_dir() and d.name in p.classes)
    if not folders:
        raise SystemExit(f"no class folders of {', '.join(p.classes)} in '{a.data}'.")
    truth, images = [], []
    for d in folders:
        for f in sorted(f for f in d.iterdir() if is_image_path(f))[: a.per_class]:
            try:
                images.append(decode_image(f))
            except ImageDecodeError as exc:  # said and left out; the rest is measured
                print(f"skipped: {exc}", file=sys.stderr)
                continue
            truth.append(d.name)
    truth = np.array(truth)
    names = [d.name for d in folders]
    print(f"{a.model} on the first {a.per_class} images per class of {a.data} ({len(truth)} images)")
    own = own_test_images(p)
    if own:
        lap, rel = sharpness(p, own)
        print(f"sharpness of every fifth test image of the model's manifest ({len(own)}): {lap:.1f} ({rel:.4f})")
    print("| change | sharpness | focus sharpness | accuracy | " + " | ".join(names) + " | most frequent errors |")
    print("|---|---|---|---|" + "---|" * len(names) + "---|")
    for change in a.changes:
        changed = [CHANGES[change](im) for im in images]
        got = np.array([p.classes[int(np.argmax(r.probs))] for r in p.predict_many(changed)])
        recall = " | ".join(f"{np.mean(got[truth == c] == c):.2f}" for c in names)
        errors = Counter(f"{t}->{g}" for t, g in zip(truth, got) if t != g).most_common(3)
        lap, rel = sharpness(p, changed)
        print(f"| {change} | {lap:.1f} | {rel:.4f} | {np.mean(got == truth):.3f} | {recall} | "
              f"{', '.join(f'{e} {n}' for e, n in errors)} |")


if __name__ == "__main__":
    main()

"""Macenko stain normalisation (torchstain's numpy normaliser) as the label-free stain mapping issue 28
names: does mapping a lab's stain onto the training stain help the bundled model?

The target stain is fitted on 200 of the model's training images pooled (every pixel of them as one
image: the fit only looks at pixels). Three ways are measured with the bundled model's calls:
- other-lab-pbc, the README's adaptation split: the lab's stain fitted on its first 20 images per class
  pooled (100, no label used), each of the other 400 mapped from it onto the target;
- the same 400, each mapped with its own stain estimate (torchstain's ``normalize``, per image);
- bone-marrow-7's 525 test images mapped from a stain fitted on 500 other training images: the
  training lab onto itself, which should change nothing.

torchstain is not a dependency of marrowscope; install it beside the environment, not into it:

    pip install --no-deps --target /tmp/tslib torchstain==1.4.1
    PYTHONPATH=/tmp/tslib python experiments/label_free_macenko.py [--out docs/results/label_free_macenko.json]
"""

import argparse
import json
import random
import tempfile
from pathlib import Path

import numpy as np
from label_free_tent import _bench_label_free  # experiments/ is on the path when run as a script
from PIL import Image
from torchstain.numpy.normalizers.macenko import NumpyMacenkoNormalizer

from marrowscope.core.artifacts import resolve_model_dir
from marrowscope.core.data import default_data_dir
from marrowscope.core.manifest import read_manifest
from marrowscope.core.predict import Predictor

IO = 240  # torchstain's default background intensity


def rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def fitted(files) -> NumpyMacenkoNormalizer:
    """A normaliser whose stain is fitted on every pixel of ``files``, pooled."""
    norm = NumpyMacenkoNormalizer()
    norm.fit(np.concatenate([rgb(f).reshape(-1, 1, 3) for f in files]), Io=IO)
    return norm


def mapped(image: np.ndarray, source: NumpyMacenkoNormalizer, target: NumpyMacenkoNormalizer) -> np.ndarray:
    """``image`` unmixed with ``source``'s stain and mixed again with ``target``'s: torchstain's own
    ``normalize``, with the stain fitted on a whole lab rather than on the image."""
    od = -np.log((image.reshape(-1, 3).astype(float) + 1) / IO)
    conc = np.linalg.lstsq(source.HERef, od.T, rcond=None)[0] * (target.maxCRef / source.maxCRef)[:, None]
    return np.clip(IO * np.exp(-target.HERef @ conc), 0, 255).T.reshape(image.shape).astype(np.uint8)


def per_image(image: np.ndarray, target: NumpyMacenkoNormalizer) -> np.ndarray:
    try:
        return target.normalize(image, Io=IO, stains=False)[0]
    except np.linalg.LinAlgError:  # too few stained pixels to estimate a stain: left as it was
        return image


def accuracy(p: Predictor, images, labels) -> float:
    return round(float(np.mean([r.call == y for r, y in zip(p.predict_many(images), labels)])), 4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="docs/results/label_free_macenko.json")
    a = ap.parse_args()
    model = resolve_model_dir(a.model)
    p = Predictor(model)
    rows = read_manifest(model / "manifest.csv")
    train = [s.path for s in rows if s.split == "train"]
    random.Random(0).shuffle(train)
    target = fitted(train[:200])
    other = default_data_dir().parent / "other-lab-pbc"
    with tempfile.TemporaryDirectory() as work:
        fit, rest = _bench_label_free().adaptation_split(other, Path(work))
        files = sorted(rest.rglob("*.jpg"))
        labels = [f.parent.name for f in files]
        lab = fitted(sorted(fit.glob("*.jpg")))
        out = {"other_lab_400": {"as_they_are": accuracy(p, files, labels),
                                 "lab_stain_pooled_to_training": accuracy(
                                     p, [mapped(rgb(f), lab, target) for f in files], labels),
                                 "each_image_own_stain_to_training": accuracy(
                                     p, [per_image(rgb(f), target) for f in files], labels)}}
    test = [s for s in rows if s.split == "test"]
    own = fitted(train[200:700])
    out["bone_marrow_7_test_525"] = {
        "as_they_are": accuracy(p, [s.path for s in test], [s.label for s in test]),
        "own_stain_pooled_to_training": accuracy(p, [mapped(rgb(s.path), own, target) for s in test],
                                                 [s.label for s in test])}
    out["stains"] = {"training": target.HERef.round(3).tolist(), "other_lab": lab.HERef.round(3).tolist()}
    print(json.dumps(out, indent=2))
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""First probe of label-free fitting (issue 28): which of a lab's unlabelled statistics help the bundled
model on that lab, measured with the labels the fit never sees.

    python experiments/label_free_probe.py [--model models/default]

other-lab-pbc, the README's adaptation split: fitted on the first 20 images of each class by sorted
file name (100 images, pooled, no labels used), measured on the remaining 80 per class (400 images).
Candidates, each alone:
- the lab's pixel size pooled over the 100 images (red cells) instead of each image's own estimate;
- Reinhard colour transfer with statistics pooled per lab (:mod:`marrowscope.core.stain`), against
  300 of the model's training images;
- AdaBN: every batch-norm layer's statistics re-estimated on the 100 images (``replace``), or the
  average of the source's and the lab's (``mix 0.5``).
Prints accuracy, recall per class and the share the domain check marks unusual. Needs torchstain
(its numpy colour conversions only). Install it outside the project's .venv: its wheel ships a top-level
`tests` package that shadows this repository's tests.
"""

import argparse
import copy
import random
from typing import Iterable

import numpy as np
import torch
from PIL import Image

from marrowscope.core.data import scan_folder
from marrowscope.core.images import decode_image
from marrowscope.core.manifest import read_manifest
from marrowscope.core.predict import Predictor
from marrowscope.core.samples import default_data_dir
from marrowscope.core.scale import measure

STATS_SIDE = 64  # statistics on a copy of each image this size: the colours, not the detail, matter


def _rgb2lab(a: np.ndarray) -> np.ndarray:
    from torchstain.numpy.utils.rgb2lab import rgb2lab

    return rgb2lab(a)


def _lab2rgb(a: np.ndarray) -> np.ndarray:
    from torchstain.numpy.utils.lab2rgb import lab2rgb

    return lab2rgb(a)


def lab_stats(images: Iterable[Image.Image]) -> tuple[list[float], list[float]]:
    """(mean, sd) of L*, a* and b* over all pixels of ``images`` together."""
    pixels = []
    for im in images:
        small = im.convert("RGB")
        small.thumbnail((STATS_SIDE, STATS_SIDE), Image.BILINEAR)
        pixels.append(_rgb2lab(np.asarray(small, dtype=np.float32) / 255.0).reshape(-1, 3))
    lab = np.concatenate(pixels)
    return lab.mean(axis=0).tolist(), lab.std(axis=0).tolist()


class LabStain:
    """PIL image -> the same image with the lab's L*a*b* statistics mapped onto the training images'."""

    def __init__(self, lab_mean, lab_std, train_mean, train_std):
        self.lab_mean, self.lab_std = np.asarray(lab_mean, np.float32), np.asarray(lab_std, np.float32)
        self.train_mean, self.train_std = np.asarray(train_mean, np.float32), np.asarray(train_std, np.float32)

    @classmethod
    def fit(cls, lab_images: Iterable[Image.Image], training_images: Iterable[Image.Image]) -> "LabStain":
        return cls(*lab_stats(lab_images), *lab_stats(training_images))

    def __call__(self, image: Image.Image) -> Image.Image:
        lab = _rgb2lab(np.asarray(image, dtype=np.float32) / 255.0)
        lab = (lab - self.lab_mean) / np.maximum(self.lab_std, 1e-3) * self.train_std + self.train_mean
        rgb = _lab2rgb(lab.astype(np.float32))
        return Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8))


def report(name, results, rest, classes):
    acc = float(np.mean([r.call == s.label for r, s in zip(results, rest)]))
    recall = {c: round(float(np.mean([r.call == c for r, s in zip(results, rest) if s.label == c])), 2)
              for c in classes}
    unusual = float(np.mean([bool(r.unusual) for r in results]))
    print(f"{name:<22} accuracy {acc:.4f}  recall {recall}  unusual {unusual:.2f}")


def adabn(net, batch: np.ndarray, mix: float) -> None:
    """Re-estimate every BatchNorm2d's statistics on ``batch`` (cumulative average), then keep ``mix`` of
    them and 1 - ``mix`` of the source's."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for i in range(0, len(batch), 25):
            net(torch.from_numpy(batch[i: i + 25]))
    for m, (mu, var) in zip(bns, saved):
        m.eval()
        m.momentum = 0.1
        m.running_mean.mul_(mix).add_((1 - mix) * mu)
        m.running_var.mul_(mix).add_((1 - mix) * var)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/default")
    a = ap.parse_args()
    torch.set_num_threads(2)
    samples, _ = scan_folder(default_data_dir().parent / "other-lab-pbc")
    classes = sorted({s.label for s in samples})
    ordered = {c: sorted((s for s in samples if s.label == c), key=lambda s: s.path.name) for c in classes}
    fit = [s for c in classes for s in ordered[c][:20]]
    rest = [s for c in classes for s in ordered[c][20:]]

    p = Predictor(a.model)
    report("as shipped", list(p.predict_many([s.path for s in rest])), rest, classes)
    pooled = measure([s.path for s in fit])
    um = pooled["pixel_size_um"] if pooled else None
    report(f"pooled pixel size {um}", list(p.predict_many([s.path for s in rest], pixel_size=um)), rest, classes)
    train = [s for s in read_manifest(p.model_dir / "manifest.csv") if s.split == "train"]
    random.Random(0).shuffle(train)
    stain = LabStain.fit([decode_image(s.path) for s in fit], [decode_image(s.path) for s in train[:300]])
    report("Reinhard, pooled", list(p.predict_many([stain(decode_image(s.path)) for s in rest])), rest, classes)

    t = Predictor(a.model, backend="torch")
    source = copy.deepcopy(t.net.state_dict())
    batch = np.stack([t.load(s.path)[0] for s in fit])
    for mix in (1.0, 0.5):
        t.net.load_state_dict(source)
        adabn(t.net, batch, mix)
        report(f"AdaBN mix {mix}", list(t.predict_many([s.path for s in rest])), rest, classes)


if __name__ == "__main__":
    main()

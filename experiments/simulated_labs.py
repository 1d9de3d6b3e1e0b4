"""Label-free fitting on simulated labs: bone-marrow-7's test split shifted in stain, scale and focus by
torchvision's transforms (not the training recipe's augmentation), then `adapt --unlabelled` fitted on
each shifted set's own images (no labels) and measured on them.

    python experiments/simulated_labs.py [--model models/default] [--out docs/results/simulated_labs.json]

Prints, per simulated lab, accuracy and macro-F1 of the bundled model before and after the fit.
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as F

from marrowscope.core.artifacts import resolve_model_dir
from marrowscope.core.images import decode_image
from marrowscope.core.manifest import read_manifest
from marrowscope.core.predict import Predictor
from marrowscope.fit.label_free import adapt_unlabelled
from marrowscope.report.evaluate import evaluate

LABS = {  # fixed shifts, one simulated lab each
    "warmer stain": dict(hue=0.04, saturation=1.3),
    "paler, bluer stain": dict(hue=-0.05, gamma=0.75),
    "out of focus": dict(blur=1.5),
    "lower magnification": dict(scale=0.8),
    "all at once": dict(hue=0.03, brightness=0.85, blur=1.0, scale=1.2),
}


def shift(image, hue=0.0, saturation=1.0, gamma=1.0, brightness=1.0, blur=0.0, scale=1.0):
    x = F.pil_to_tensor(image)
    if hue:
        x = F.adjust_hue(x, hue)
    if saturation != 1.0:
        x = F.adjust_saturation(x, saturation)
    if gamma != 1.0:
        x = F.adjust_gamma(x, gamma)
    if brightness != 1.0:
        x = F.adjust_brightness(x, brightness)
    if blur:
        x = F.gaussian_blur(x, [2 * round(3 * blur) + 1] * 2, [blur, blur])
    if scale != 1.0:
        x = F.resize(x, [round(x.shape[1] * scale), round(x.shape[2] * scale)], antialias=True)
    return F.to_pil_image(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="docs/results/simulated_labs.json")
    a = ap.parse_args()
    torch.set_num_threads(2)
    source = resolve_model_dir(a.model)
    test = [s for s in read_manifest(source / "manifest.csv") if s.split == "test"]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name, params in LABS.items():
            lab = Path(work) / name.replace(" ", "_").replace(",", "")
            for s in test:
                (lab / "cells" / s.label).mkdir(parents=True, exist_ok=True)
                shift(decode_image(s.path), **params).save(lab / "cells" / s.label / (s.path.stem + ".png"))
            flat = lab / "unlabelled"
            flat.mkdir()
            for f in (lab / "cells").rglob("*.png"):
                shutil.copy(f, flat / f"{f.parent.name}_{f.name}")  # the fit sees no folders, so no labels
            before = evaluate(Predictor(source), lab / "cells", "all")
            adapt_unlabelled(flat, source, lab / "fitted")
            after = evaluate(Predictor(lab / "fitted"), lab / "cells", "all")
            rows.append({"lab": name, "shift": params, "accuracy_before": round(before["accuracy"], 4),
                         "accuracy_after": round(after["accuracy"], 4), "macro_f1_before": round(before["macro_f1"], 4),
                         "macro_f1_after": round(after["macro_f1"], 4)})
            print(json.dumps(rows[-1]), flush=True)
    Path(a.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Label-free fitting on simulated labs: bone-marrow-7's test split shifted in stain, scale and focus by
torchvision's transforms (not the training recipe's augmentation), then `adapt --unlabelled` fitted on
each shifted set's own images (no labels) and measured on them.

    python experiments/simulated_labs.py [--model models/default] [--out docs/results/simulated_labs.json]
    python experiments/simulated_labs.py --strong --out docs/results/simulated_labs_strong.json

Prints, per simulated lab, accuracy and macro-F1 of the bundled model before and after the fit.
``--strong``: labs shifted far more, towards the labs that fall to about 0.6, each fitted twice: with the
lab's batch-norm statistics half and half with the source's (the default) and with the lab's alone.
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
from marrowscope.fit.label_free import BN_MIX, adapt_unlabelled
from marrowscope.report.evaluate import evaluate

LABS = {  # fixed shifts, one simulated lab each
    "warmer stain": dict(hue=0.04, saturation=1.3),
    "paler, bluer stain": dict(hue=-0.05, gamma=0.75),
    "out of focus": dict(blur=1.5),
    "lower magnification": dict(scale=0.8),
    "all at once": dict(hue=0.03, brightness=0.85, blur=1.0, scale=1.2),
}
STRONG_LABS = {
    "much warmer stain": dict(hue=0.10, saturation=1.5),
    "much bluer, paler stain": dict(hue=-0.12, gamma=0.6),
    "darker, duller stain": dict(brightness=0.6, saturation=0.6),
    "far out of focus": dict(blur=3.0),
    "strongly shifted at once": dict(hue=0.07, brightness=0.8, blur=2.0, scale=0.75),
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
    ap.add_argument("--strong", action="store_true", help="the strongly shifted labs, each fitted with both mixes")
    a = ap.parse_args()
    torch.set_num_threads(2)
    source = resolve_model_dir(a.model)
    test = [s for s in read_manifest(source / "manifest.csv") if s.split == "test"]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name, params in (STRONG_LABS if a.strong else LABS).items():
            lab = Path(work) / name.replace(" ", "_").replace(",", "")
            for s in test:
                (lab / "cells" / s.label).mkdir(parents=True, exist_ok=True)
                shift(decode_image(s.path), **params).save(lab / "cells" / s.label / (s.path.stem + ".png"))
            flat = lab / "unlabelled"
            flat.mkdir()
            for f in (lab / "cells").rglob("*.png"):
                shutil.copy(f, flat / f"{f.parent.name}_{f.name}")  # the fit sees no folders, so no labels
            before = evaluate(Predictor(source), lab / "cells", "all")
            row = {"lab": name, "shift": params, "accuracy_before": round(before["accuracy"], 4),
                   "macro_f1_before": round(before["macro_f1"], 4)}
            for mix in ((BN_MIX, 1.0) if a.strong else (BN_MIX,)):
                fitted = lab / f"fitted_{mix:g}"
                adapt_unlabelled(flat, source, fitted, mix=mix)
                after = evaluate(Predictor(fitted), lab / "cells", "all")
                tag = "" if mix == BN_MIX else f"_lab_statistics_{mix:g}"
                row.update({f"accuracy_after{tag}": round(after["accuracy"], 4),
                            f"macro_f1_after{tag}": round(after["macro_f1"], 4)})
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    Path(a.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

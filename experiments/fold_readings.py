"""Out-of-fold logits of a cross-validation's fold models, each on its own held-out fold, through another
model folder's preprocessing (``--like``: its scale and focus settings; default: the fold models' own): to
ask what an inference setting would do to the review policy without touching the test split. Feed the result to
``experiments/policy_across_models.py``, which fits each fold's policy on the other folds.

    python experiments/fold_readings.py runs/cv/student/oof.npz --folds runs/cv/student --out runs/x.npz
        [--like MODEL_DIR] [--backend onnx|onnx-int8|torch] [--zoom 0.7] [--data-root DIR]

``--backend onnx-int8`` exports each fold model to ONNX and to static INT8 (calibrated on 200 of that
fold model's own training images). ``--zoom Z`` adds a second view: every image read again with the cell
at Z of its size (the second reading, as if every image were unusual). The output holds one view (or
two with ``--zoom``) in the layout of ``marrowscope cv``'s oof.npz.
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from marrowscope.core.artifacts import CONFIG, resolve_model_dir, write_settings
from marrowscope.core.data import default_data_dir
from marrowscope.core.predict import Predictor
from marrowscope.fit.export import export_int8, export_onnx, int8_images


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("oof", help="oof.npz of `marrowscope cv` (paths, folds, labels)")
    ap.add_argument("--folds", required=True, help="the cv folder holding fold0/model ... foldK/model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--like", default=None, help="model folder whose scale and focus settings to use "
                    "(default: the fold models' own)")
    ap.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"])
    ap.add_argument("--zoom", type=float, default=None)
    ap.add_argument("--data-root", default=None, help="default: ../shared/data/bone-marrow-7")
    a = ap.parse_args()
    z = np.load(a.oof)
    root = Path(a.data_root) if a.data_root else default_data_dir()
    like = json.loads((resolve_model_dir(a.like) / CONFIG).read_text()).get("marrowscope", {}) if a.like else None
    out = np.zeros((2 if a.zoom else 1,) + z["logits"].shape[1:], np.float32)
    with tempfile.TemporaryDirectory() as work:
        for k in np.unique(z["folds"]):
            model = Path(shutil.copytree(Path(a.folds) / f"fold{k}" / "model", Path(work) / f"fold{k}"))
            if like is not None:
                write_settings(model, scale=like.get("scale"), focus=like.get("focus"))
            if a.backend != "torch":
                export_onnx(model)
            if a.backend == "onnx-int8":
                export_int8(model, int8_images(model, 200, str(root)), int8_images(model, 200, str(root), train=False))
            p = Predictor(model, backend=a.backend)
            if a.zoom and not p.info.scale:
                ap.error(f"--zoom needs a training scale, and fold {k}'s model (or --like) records none.")
            idx = np.where(z["folds"] == k)[0]
            files = [root / str(z["paths"][i]) for i in idx]
            first = list(p.stream_logits(files))  # the fold's images are readable: cv read them all
            out[0, idx] = np.stack([r.logits[0] for r in first])
            if a.zoom:  # every image read again, as if the domain check flagged it
                again = p.read_again(files, [r.scale for r in first], None, zoom=a.zoom)
                out[1, idx] = np.stack([g[0] for g in again])
            print(f"fold {k}: {len(idx)} images", flush=True)
    np.savez(a.out, logits=out, y=z["y"], folds=z["folds"], paths=z["paths"], classes=z["classes"])
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

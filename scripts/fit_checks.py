"""Fit what ``marrowscope train`` fits after training (:mod:`marrowscope.fits`) on a model folder made
without it: its training scale, focus settings and domain check, on the non-test images of its
manifest, in that order. Each later one is measured on images prepared with the earlier ones, so
after refitting the scale or the focus, refit the domain check too (the default does all three).

    python scripts/fit_checks.py models/default [--only scale focus domain] [--data MANIFEST] [--data-root DIR]
"""

import argparse

from marrowscope.artifacts import resolve_model_dir
from marrowscope.data import load_samples
from marrowscope.fits import FITS, fit_checks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--only", nargs="+", choices=FITS, default=list(FITS))
    ap.add_argument("--data", default=None, help="default: the model folder's manifest.csv")
    ap.add_argument("--data-root", default=None)
    a = ap.parse_args()
    model_dir = resolve_model_dir(a.model)
    manifest = a.data or model_dir / "manifest.csv"
    samples, _ = load_samples(manifest, None, data_root=a.data_root)
    for name, fitted in fit_checks(model_dir, samples, manifest, a.data_root, a.only).items():
        print(f"{name}: {fitted if fitted else 'nothing to measure it on (left as it was)'}")


if __name__ == "__main__":
    main()

"""Fit a model folder's domain check (Mahalanobis distance on its pooled features) on its training
images, the threshold on its validation images, and store it in the folder.

    python scripts/fit_domain.py models/default [--data models/default/manifest.csv] [--data-root DIR]
"""

import argparse

from marrowscope.artifacts import resolve_model_dir
from marrowscope.domain import fit_for_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--data", default=None, help="default: the model folder's manifest.csv")
    ap.add_argument("--data-root", default=None)
    a = ap.parse_args()
    model_dir = resolve_model_dir(a.model)
    print(fit_for_model(model_dir, a.data or model_dir / "manifest.csv", a.data_root))


if __name__ == "__main__":
    main()

"""Measure a model's training pixel size from the red cells in its training and validation images
and store it in the model folder (config.json, ``marrowscope.scale``), with the side of its crops.
``marrowscope train`` does this itself; this script is for model folders made before it did.

    python scripts/measure_scale.py models/default [--data-root DIR]
"""

import argparse

from marrowscope.artifacts import resolve_model_dir, write_settings
from marrowscope.manifest import read_manifest
from marrowscope.scale import measure


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--data-root", default=None)
    a = ap.parse_args()
    model_dir = resolve_model_dir(a.model)
    scale = measure([s.path for s in read_manifest(model_dir / "manifest.csv", a.data_root) if s.split != "test"])
    if scale is None:
        raise SystemExit("no whole red cell found in the training images: the scale cannot be measured.")
    write_settings(model_dir, scale=scale)
    print(scale)


if __name__ == "__main__":
    main()

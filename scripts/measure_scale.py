"""Measure a model's training pixel size from the red cells in its training images and store it
in the model folder (config.json, ``marrowscope.scale``), with the side of its training crops.

    python scripts/measure_scale.py models/default [--data-root DIR]

Test images are left out: the scale belongs to the training data.
"""

import argparse
from collections import Counter

from marrowscope.artifacts import resolve_model_dir, write_settings
from marrowscope.images import decode_image
from marrowscope.manifest import read_manifest
from marrowscope.scale import measure


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--data-root", default=None)
    a = ap.parse_args()
    model_dir = resolve_model_dir(a.model)
    samples = [s for s in read_manifest(model_dir / "manifest.csv", a.data_root) if s.split != "test"]
    images = [decode_image(s.path) for s in samples]
    m = measure(images)
    if not m.get("pixel_size_um"):
        raise SystemExit("no whole red cell found in the training images: the scale cannot be measured.")
    side = Counter(max(im.size) for im in images).most_common(1)[0][0]
    scale = {"pixel_size_um": round(m["pixel_size_um"], 4), "field_px": side,
             "how": f"median diameter {m['median_diameter_px']:.1f} px of {m['red_cells']} whole red cells "
                    f"(7.5 um) in {m['images_with_red_cells']} of {len(images)} training and validation images; "
                    f"field: their usual side, {side} px"}
    write_settings(model_dir, scale=scale)
    print(scale)


if __name__ == "__main__":
    main()

"""Which static INT8 layout holds on this CPU: each of ``marrowscope.fit.export.INT8_FORMATS`` made from
the same fp32 model and calibration images, then compared with fp32 on other images of the model's
manifest (largest probability difference, share with the same top class) and timed (ONNX Runtime,
batch 32, median of 5). Nothing in the model folder changes: each layout is made in a copy.

    python experiments/int8_formats.py [--model models/default] [--calibration 200] [--check 200]
"""

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from marrowscope.core.artifacts import load_model_folder, resolve_model_dir
from marrowscope.core.images import decode_image
from marrowscope.core.preprocess import Preprocess
from marrowscope.fit.export import INT8_FORMATS, export_int8, int8_images


def ms_per_image(path: Path, x: np.ndarray) -> float:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {s.get_inputs()[0].name: x}
    s.run(None, feed)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        s.run(None, feed)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times) / len(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--calibration", type=int, default=200)
    ap.add_argument("--check", type=int, default=200)
    ap.add_argument("--data-root", default=None)
    a = ap.parse_args()
    src = resolve_model_dir(a.model)
    calib = int8_images(src, a.calibration, a.data_root)
    check = int8_images(src, a.check, a.data_root, train=False)
    pre = Preprocess.for_model(load_model_folder(src)[1])
    x = np.stack([pre(decode_image(f))[0] for f in check[:32]])
    print(f"{src.name}: calibrated on {len(calib)} training images, checked on {len(check)} others")
    print(f"fp32: {ms_per_image(src / 'model.onnx', x):.2f} ms/image")
    with tempfile.TemporaryDirectory() as work:
        for fmt in INT8_FORMATS:
            model = Path(shutil.copytree(src, Path(work) / fmt, ignore=shutil.ignore_patterns("*.int8.onnx")))
            path, c = export_int8(model, calib, check, [fmt], max_diff=1.0, min_agreement=0.0)
            print(f"{fmt}: largest probability difference {c['max_prob_diff']:.3f}, same top class "
                  f"{c['top1_agreement']:.1%}, {ms_per_image(path, x):.2f} ms/image", flush=True)


if __name__ == "__main__":
    main()

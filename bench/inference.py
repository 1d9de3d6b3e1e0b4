"""Inference benchmark. Prints a table and writes JSON (training throughput: bench/train_scale.py).

    python bench/inference.py [--model models/default] [--data ../shared/data/bone-marrow-7]
        [--out docs/results/results.json]

Single image: file -> top-3 (decode, preprocess, model, softmax), median and p95 over --runs runs
after warm-up, per backend, and apart: the medians of decode + preprocessing and of the forward pass
(with the domain check). Folder: files -> CSV rows through `predict`'s pipeline (batch.run_batch:
threaded decoding overlapping inference), images/s. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def latency(pred, files, runs):
    for f in files[:5]:
        pred.predict(f)
    times = []
    for k in range(runs):
        t = time.perf_counter()
        pred.predict(files[k % len(files)])
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), float(np.percentile(times, 95))


def stages(pred, files, runs):
    """Median ms of one image's decode and preprocessing (``load``) and of its forward pass with the domain
    check (``forward``), timed apart: where the single-image time goes."""
    load, forward = [], []
    for k in range(runs):
        t = time.perf_counter()
        x = pred.load(files[k % len(files)])
        t1 = time.perf_counter()
        pred.forward(x[0][None])
        load.append((t1 - t) * 1000)
        forward.append((time.perf_counter() - t1) * 1000)
    return statistics.median(load), statistics.median(forward)


def folder_throughput(pred, files):
    from marrowscope.core.batch import run_batch

    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        res = run_batch(pred, files, Path(d) / "p.csv")
        secs = time.perf_counter() - t
    assert not res.errors
    return len(files) / secs


def main():
    from marrowscope.core.artifacts import resolve_model_dir
    from marrowscope.core.data import default_data_dir
    from marrowscope.core.predict import Predictor

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--folder-images", type=int, default=350)
    ap.add_argument("--out", default="docs/results/results.json")
    ap.add_argument("--backends", default="torch,onnx,onnx-int8", help="comma-separated subset to measure")
    a = ap.parse_args()
    data = Path(a.data) if a.data else default_data_dir()
    files = sorted(data.rglob("*.jpg"))[:: max(1, len(list(data.rglob("*.jpg"))) // a.folder_images)][: a.folder_images]
    model_dir = resolve_model_dir(a.model)
    import onnxruntime
    import timm

    out = {"date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
           "cores": os.cpu_count(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
           "timm": timm.__version__, "model": model_dir.name, "threads": torch.get_num_threads(), "rows": []}
    from marrowscope.core.predict import ONNX_FILES

    configs = [(b, tta) for tta in (False, True) for b in a.backends.split(",")]
    for backend, tta in configs:
        if backend in ONNX_FILES and not (model_dir / ONNX_FILES[backend]).exists():
            continue
        pred = Predictor(model_dir, backend=backend, tta=tta)
        med, p95 = latency(pred, files, a.runs)
        load, forward = stages(pred, files, a.runs)
        ips = folder_throughput(pred, files)
        row = {"backend": backend, "tta": tta, "single_median_ms": round(med, 1), "single_p95_ms": round(p95, 1),
               "load_median_ms": round(load, 1), "forward_median_ms": round(forward, 1),
               "folder_images_per_s": round(ips, 1), "folder_images": len(files)}
        out["rows"].append(row)
        print(json.dumps(row), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""Peak memory and time of counting one large field: a synthetic 8,000 x 8,000 px JPEG smear (64
white cells among red cells, drawn here), through ``marrowscope count`` in a fresh process.

    python bench/large_field.py [--side 8000] [--model models/default] [--detector auto]

Prints the field's size, the cells counted, the wall time and the process's peak RSS (the target:
at most 2.5 GB for 8,000 x 8,000 px).
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PATCH = 1000  # px; one white cell per patch, at 0.1 µm per pixel


def make_field(side: int, path: Path) -> int:
    """A side x side px smear tiled from one 1,000 px patch (a white cell in its middle); returns the cells."""
    rng = np.random.default_rng(0)
    a = np.empty((PATCH, PATCH, 3), np.float32)
    a[:] = (236, 226, 230)
    yy, xx = np.ogrid[:PATCH, :PATCH]
    for _ in range(60):
        cx, cy = rng.uniform(0, PATCH, 2)
        d = (xx - cx) ** 2 + (yy - cy) ** 2
        if (cx - 500) ** 2 + (cy - 500) ** 2 > 130 ** 2:
            a[d < 37.5 ** 2] = (215, 140, 150)
            a[d < 15 ** 2] = (228, 185, 190)
    d = (xx - 500) ** 2 + (yy - 500) ** 2
    a[d < 60 ** 2] = (200, 170, 215)
    a[d < 35 ** 2] = (95, 45, 150)
    patch = Image.fromarray((a + rng.normal(0, 4, a.shape)).clip(0, 255).astype(np.uint8))
    field = Image.new("RGB", (side, side))
    n = side // PATCH
    for i in range(n):
        for j in range(n):
            field.paste(patch, (i * PATCH, j * PATCH))
    field.save(path, quality=90)
    return n * n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=8000)
    ap.add_argument("--model", default=None)
    ap.add_argument("--detector", default="auto")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "field.jpg"
        cells = make_field(a.side, path)
        cmd = [sys.executable, "-m", "marrowscope", "count", str(path), "--out", str(Path(work) / "out"),
               "--detector", a.detector] + (["--model", a.model] if a.model else [])
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if done.returncode:
            sys.exit(done.stderr[-2000:])
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
        summary = json.loads((Path(work) / "out" / "count.json").read_text())
    print(f"field {a.side} x {a.side} px, {cells} white cells drawn whole; counted {summary['cells_counted']} "
          f"({summary['cells_not_counted_edge']} cut by an edge); {wall:.1f} s; peak RSS {peak_gb:.2f} GB")


if __name__ == "__main__":
    main()

"""A synthetic class-folder tree of any size made from bone-marrow-7, for scale benchmarks only
(never commit it, never report accuracy on it): each file is a real crop, mirrored or turned,
colour-shifted a little and re-encoded as JPEG at a random quality, so no two files are identical.

    python bench/make_synthetic.py --out runs/bm170k --images 170000 [--classes 7|21] [--workers 2]

With ``--classes 21`` the 7 real classes are spread over 21 folder names (BLA, BLA_2, BLA_3, ...)
to exercise a 21-class run; a manifest (``manifest.csv``: 80/10/10 split) is written beside the folders.
"""

from __future__ import annotations

import argparse
import io
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps


def _one(job: tuple[str, str, int]) -> None:
    src, dst, seed = job
    rng = random.Random(seed)
    im = Image.open(src).convert("RGB")
    if rng.random() < 0.5:
        im = ImageOps.mirror(im)
    im = im.rotate(90 * rng.randrange(4))
    im = ImageEnhance.Color(im).enhance(rng.uniform(0.85, 1.15))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=rng.randint(80, 95))
    Path(dst).write_bytes(buf.getvalue())


def main() -> None:
    from marrowscope.core.classes import CLASSES
    from marrowscope.core.data import default_data_dir

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=170_000)
    ap.add_argument("--classes", type=int, default=7, choices=[7, 21])
    ap.add_argument("--data", default=None, help="bone-marrow-7 (default: ../shared/data/bone-marrow-7)")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    data = Path(a.data) if a.data else default_data_dir()
    out = Path(a.out)
    names = [c if k == 0 else f"{c}_{k + 1}" for k in range(a.classes // 7) for c in CLASSES]
    sources = {c: sorted((data / c).glob("*.jpg")) for c in CLASSES}
    jobs, rows = [], []
    for i in range(a.images):
        name = names[i % len(names)]
        src = sources[name.split("_")[0]][(i // len(names)) % 500]
        rel = f"{name}/{i // 10000:02d}/{name}_{i:06d}.jpg"
        jobs.append((str(src), str(out / rel), i))
        split = "test" if i % 10 == 0 else "val" if i % 10 == 1 else "train"
        rows.append(f"{rel},{name},{split},\n")
    for rel in {str(Path(j[1]).parent) for j in jobs}:
        Path(rel).mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(a.workers) as pool:
        list(pool.map(_one, jobs, chunksize=500))
    (out / "manifest.csv").write_text("path,label,split,sha256\n" + "".join(rows))
    print(f"{a.images} images in {len(names)} class folders under {out}; manifest: {out / 'manifest.csv'}")


if __name__ == "__main__":
    main()

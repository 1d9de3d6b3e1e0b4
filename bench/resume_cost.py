"""What keeping results as they are made costs: folder -> CSV images/s through `predict`'s pipeline with
the partial file (``run_batch`` with an output, as ``predict`` runs) and without it (the same results
written to the same CSV), alternated, median of --repeats each. Run it on an idle machine.

    python bench/resume_cost.py [--model models/default] [--data ../shared/data/bone-marrow-7] [--images 350]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def once(pred, files, keep: bool) -> float:
    from marrowscope.core.batch import BatchResult, predict_files, run_batch

    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        if keep:
            run_batch(pred, files, Path(d) / "p.csv")
        else:
            got = predict_files(pred, files)
            result = BatchResult.for_predictor(pred)
            for f in files:
                result.add(got[str(f)])
            result.write(Path(d) / "p.csv")
        return len(files) / (time.perf_counter() - t)


def main() -> None:
    from marrowscope.core.data import default_data_dir
    from marrowscope.core.predict import Predictor

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--images", type=int, default=350)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    data = Path(a.data) if a.data else default_data_dir()
    every = sorted(data.rglob("*.jpg"))
    files = every[:: max(1, len(every) // a.images)][: a.images]
    pred = Predictor(a.model)
    once(pred, files[:32], False)  # warm-up
    runs = {True: [], False: []}
    for _ in range(a.repeats):
        for keep in (False, True):
            runs[keep].append(once(pred, files, keep))
    without, with_ = statistics.median(runs[False]), statistics.median(runs[True])
    print(f"{len(files)} images of {data.name}, backend {pred.backend}: {without:.1f} images/s without the partial "
          f"file, {with_:.1f} with it ({100 * (with_ / without - 1):+.1f}%); runs: "
          f"{[round(x, 1) for x in runs[False]]} / {[round(x, 1) for x in runs[True]]}")


if __name__ == "__main__":
    main()

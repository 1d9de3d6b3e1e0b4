"""Does the CPU data pipeline keep up with the training step? Both measured in one process.

    python bench/train_pipeline_share.py --tree runs/bm170k [--images 17000] [--steps 15]

`bench/train_scale.py` compares a training run with the bare step run in another process; on this
machine repeats of one run varied by up to 25%, more than the 0.9 target's margin. Here one process
runs the bare step (forward, backward and AdamW on tensors in memory), `marrowscope train` for S
steps, the bare step, the same training for 3S steps, and the bare step again. The difference of
the two trainings is the steady state (what both pay once cancels). Reported: its images/s against
the bare runs around it, and, inside the runs, the steps' share of the time (history.csv's
``data_wait_s`` is the rest: the loader producing the next batch, plus Lightning's bookkeeping).
Lite0 at 224 px, `--augment light`, batch 16, train's defaults on the CPU (no loader workers);
the images are the first N of the synthetic tree, decoded per item as any set above 1.5 GB is.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_scale import bare_step, last_epoch, steady_state, subset  # noqa: E402  (the same bare step, subsets, arithmetic)


def main() -> None:
    from marrowscope.core.config import TrainConfig
    from marrowscope.fit.train import fit

    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", required=True, help="a synthetic tree of bench/make_synthetic.py")
    ap.add_argument("--images", type=int, default=17_000)
    ap.add_argument("--steps", type=int, default=15, help="the short run's steps (the long run: 3x)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default="docs/results/train_pipeline_share.json")
    a = ap.parse_args()
    bare, runs = [bare_step(a.batch_size, 2 * a.steps)["images_per_s"]], {}
    with tempfile.TemporaryDirectory() as d:
        manifest = subset(Path(a.tree) / "manifest.csv", a.images, Path(d) / "subset.csv")
        for n in (a.steps, 3 * a.steps):
            fit(TrainConfig(data=str(manifest), out=str(Path(d) / f"run{n}"), model="tf_efficientnet_lite0",
                            img_size=224, epochs=1, batch_size=a.batch_size, max_steps=n, checks=False,
                            accelerator="cpu", patience=1000))
            runs[n] = last_epoch(Path(d) / f"run{n}")
            bare.append(bare_step(a.batch_size, 2 * a.steps)["images_per_s"])
    steady = steady_state(runs[a.steps], runs[3 * a.steps], 2 * a.steps * a.batch_size)
    result = {"date": time.strftime("%Y-%m-%d"), "images": a.images, "steps": [a.steps, 3 * a.steps],
              "batch": a.batch_size, "bare_images_per_s": bare,
              "train_images_per_s": round(steady["images_per_s"], 2),
              "train_steps_alone_images_per_s": round(steady["steps_images_per_s"], 2),
              "ratio_to_bare": round(steady["images_per_s"] / (sum(bare) / len(bare)), 3),
              "in_run_ratio": round(steady["in_run_ratio"], 3)}
    print(json.dumps(result))
    Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

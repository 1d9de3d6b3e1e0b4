"""Proof that DDP ranks read disjoint shares of a training set decoded per item (as a set too large
for memory is): two gloo processes on the CPU run one epoch of marrowscope's own `fit`, and every
training item each rank's loader reads is logged.

    python bench/ddp_shares.py [--work DIR] [--per-class 8]

Prints, and writes to DIR/shares.json, what each rank read: the two shares must not overlap and
must together cover the training split. (Lightning re-runs this script for rank 1, with LOCAL_RANK set.)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from marrowscope.fit import datasets as data

data.CACHE_BUDGET_BYTES = 0  # decoded per item in each rank's loader, as a large set is
_read_item = data.CellDataset.__getitem__


def _logged(self, i):
    item = _read_item(self, i)
    log = os.environ.get("SHARES_LOG")
    if log and self.samples[i].split == "train":
        rank = os.environ.get("LOCAL_RANK", "0")
        with open(Path(log) / f"rank{rank}.txt", "a") as fh:
            fh.write(self.samples[i].rel + "\n")
    return item


data.CellDataset.__getitem__ = _logged


def main() -> None:
    from PIL import Image

    from marrowscope.core.classes import CLASSES
    from marrowscope.core.config import TrainConfig
    from marrowscope.fit.train import fit

    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=None)
    ap.add_argument("--per-class", type=int, default=8)
    a = ap.parse_args()
    child = "LOCAL_RANK" in os.environ  # the rank Lightning launched: same arguments, data already made
    work = Path(a.work or os.environ.setdefault("SHARES_WORK", tempfile.mkdtemp()))
    os.environ["SHARES_LOG"] = str(work / "log")
    cells = work / "cells"
    if not child:
        (work / "log").mkdir(parents=True, exist_ok=True)
        for i, c in enumerate(CLASSES):
            (cells / c).mkdir(parents=True, exist_ok=True)
            for k in range(a.per_class):
                Image.new("RGB", (40, 40), (30 * i, 8 * k, 120)).save(cells / c / f"{c}_{k}.png")
    # val/test fractions of 1/8 each leave 6 training images per class: 42, two equal shares of 21
    fit(TrainConfig(data=str(cells), out=str(work / "run"), model="test_efficientnet", img_size=32, epochs=1,
                    batch_size=7, workers=1, accelerator="cpu", devices=2, val=0.125, test=0.125, checks=False))
    if child:
        return
    shares = {r: (work / "log" / f"rank{r}.txt").read_text().split() for r in ("0", "1")}
    from marrowscope.core.data import load_samples

    train = {s.rel for s in load_samples(work / "run" / "manifest.csv")[0] if s.split == "train"}
    result = {"rank0": len(shares["0"]), "rank1": len(shares["1"]),
              "overlap": sorted(set(shares["0"]) & set(shares["1"])),
              "covers_training_split": set(shares["0"]) | set(shares["1"]) == train, "training_images": len(train)}
    (work / "shares.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

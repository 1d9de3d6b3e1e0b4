"""Defaults in one place: the shared constants, and the training defaults in one dataclass whose
flags override them; the resolved config is saved into every run folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

from marrowscope.core.classes import CLASSES

VAL_FRACTION = 0.15   # of each class, for model choice and early stopping
TEST_FRACTION = 0.15  # of each class, never used for training or choice
# A cell whose top probability is below this is marked for review by a person.
REVIEW_BELOW = 0.6
# At the end of `train`, at most this many training (and validation) images, a seeded sample, measure
# the training scale and fit the domain check: bounded time on large sets; bone-marrow-7 is measured whole.
FIT_CHECK_IMAGES, FIT_CHECK_VAL_IMAGES = 3000, 1000


@dataclass
class TrainConfig:
    """Everything that decides a training run. Saved as ``config_train.json`` in the run folder."""

    data: str = ""                    # class-folder tree or manifest CSV
    out: str = "runs/default"
    model: str = "rexnet_150"         # any timm architecture name
    img_size: int = 224
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    mixup: float = 0.0                # mixup/cutmix probability per batch (timm Mixup), 0 = off
    augment: str = "light"            # "lab": +stain, background, zoom, blur, JPEG (other labs); "lab-sharp": +sharpen
    augment_on: str = "auto"          # "lab" recipe per image on "cpu" or batched on the "device"; auto: on a GPU
    distill: Optional[str] = None     # CSV of a teacher's probabilities per image (`marrowscope cv`'s oof.csv)
    distill_weight: float = 0.5       # share of the soft-target loss
    keep: str = "best"                # "best" epoch by val macro-F1, or the "last" (no choice made on val)
    max_steps: int = -1               # cap on optimiser steps (tests, benchmarks); -1: epochs decide
    checks: bool = True               # measure the training scale and fit the domain check at the end
    drop_rate: float = 0.2
    pretrained: bool = False
    init_weights: Optional[str] = None
    classes: tuple[str, ...] = CLASSES
    val: float = VAL_FRACTION
    test: float = TEST_FRACTION
    seed: int = 0
    patience: int = 10                # early stopping on val macro-F1
    workers: Optional[int] = None     # loader processes per training process; None: datasets.loader_workers
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: Optional[str] = None   # default: bf16-mixed on GPU, 32 on CPU
    max_time: Optional[str] = None    # "DD:HH:MM:SS": stop gracefully, keep the best epoch
    resume: bool = False
    half: bool = False                # store weights as float16
    data_root: Optional[str] = None   # where a manifest's images now live

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        raw = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in raw.items() if k in known})
        cfg.classes = tuple(cfg.classes)
        return cfg

"""Defaults in one place: the shared constants, and the training defaults in one dataclass whose
flags override them; the resolved config is saved into every run folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
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
# what a model folder fits after its weights, in this order (marrowscope.fit.checks)
FITS = ("scale", "focus", "domain")
# inference backends and their files in a model folder (marrowscope.core.predict): here, so that the
# commands' --help lists them without importing the inference stack
BACKENDS = ("auto", "onnx", "onnx-int8", "torch")
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
# the training recipes of marrowscope.fit.transforms.train_transform
AUGMENTATIONS = ("light", "lab", "lab-sharp")


def _opt(default, help: str = "", **flag):
    """A TrainConfig field with the help of its command-line flag (``marrowscope train`` and ``cv`` derive
    their flags from these fields; ``flag`` holds the flag's name, choices or type where they differ)."""
    return field(default=default, metadata={"help": help, **flag})


@dataclass
class TrainConfig:
    """Everything that decides a training run. Saved as ``config_train.json`` in the run folder; every
    field but ``data`` and ``out`` is a flag of ``marrowscope train`` and ``cv`` with this help."""

    data: str = ""                    # class-folder tree or manifest CSV (the commands' DATA)
    out: str = "runs/default"         # the run folder (the commands' --out)
    model: str = _opt("rexnet_150", "timm architecture name (default %(default)s)", flag="--arch")
    img_size: int = _opt(224)
    epochs: int = _opt(30)
    batch_size: int = _opt(32)
    lr: float = _opt(1e-3)
    weight_decay: float = _opt(0.05)
    label_smoothing: float = _opt(0.1)
    mixup: float = _opt(0.0, "mixup/cutmix probability per batch (timm Mixup); 0: off")
    augment: str = _opt("light", "light: crops, flips, colour; lab: also stain, background, zoom, blur, JPEG; "
                        "lab-sharp: lab and sharpening", choices=AUGMENTATIONS)
    augment_on: str = _opt("auto", "where the lab recipe runs: per image on the CPU, or batched on the device "
                           "(auto: on a GPU)", choices=("auto", "cpu", "device"))
    distill: Optional[str] = _opt(None, "CSV of a teacher's probabilities per image (cv's oof.csv): train on them "
                                  "as soft targets beside the labels")
    distill_weight: float = _opt(0.5, "share of the soft-target loss")
    keep: str = _opt("best", "keep the best epoch by val macro-F1, or the last (no choice on validation images)",
                     choices=("best", "last"))
    max_steps: int = _opt(-1, "cap on optimiser steps (tests, benchmarks); -1: the epochs decide")
    checks: bool = _opt(True, "skip measuring the training scale and focus and fitting the domain check",
                        flag="--no-checks")
    drop_rate: float = _opt(0.2)
    pretrained: bool = _opt(False, "start from ImageNet weights")
    init_weights: Optional[str] = _opt(None, ".safetensors/.pth state dict or model folder to start from")
    classes: tuple[str, ...] = _opt(CLASSES, "comma-separated class names", parse="classes")
    val: float = _opt(VAL_FRACTION)
    test: float = _opt(TEST_FRACTION)
    seed: int = _opt(0)
    patience: int = _opt(10, "epochs without a better val macro-F1 before early stopping")
    workers: Optional[int] = _opt(None, "loader processes per training process (default: none on the CPU, where "
                                  "the step's own threads use every core; up to 8 on a GPU)", type=int)
    accelerator: str = _opt("auto", choices=("auto", "cpu", "gpu", "cuda", "mps"))
    devices: int = _opt(1, "processes (GPUs) per node, through Lightning DDP")
    num_nodes: int = _opt(1)
    precision: Optional[str] = _opt(None, "Lightning precision (default bf16-mixed on GPU, 32 on CPU)")
    max_time: Optional[str] = _opt(None, "stop after DD:HH:MM:SS, keeping the best epoch")
    resume: bool = _opt(False, "continue from the run folder's last checkpoint")
    half: bool = _opt(False, "store weights as float16")
    data_root: Optional[str] = _opt(None, "folder a manifest's paths start from")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        raw = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        cfg = cls(**{k: v for k, v in raw.items() if k in known})
        cfg.classes = tuple(cfg.classes)
        return cfg

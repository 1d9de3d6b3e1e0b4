"""Training transforms (the eval side is :mod:`marrowscope.core.preprocess`).

Train: augmentation suited to cell crops; a cell has no up, down or handedness, so flips and
90-degree rotations are free; stain and background hue vary between slides, so colour jitter;
a mild scale change covers magnification drift.
"""

from __future__ import annotations

import random

import torch
from torchvision.transforms import v2

from marrowscope.core.config import AUGMENTATIONS
from marrowscope.fit.augment import BackgroundTint, ColourJitter, FocusOrJpeg, HEDJitter, ScaleJitter, focus_settings


class RandomRot90(torch.nn.Module):
    """Rotate by 0, 90, 180 or 270 degrees: exact, no interpolation, no filled corners."""

    def forward(self, img):
        k = random.randrange(4)
        return v2.functional.rotate(img, 90 * k) if k else img


def train_transform(data_config: dict, augment: str = "light", *, scale: tuple[float, float] = (0.75, 1.0),
                    color: float = 0.25, hue: float = 0.04):
    """PIL RGB image -> augmented, normalised float tensor [3, H, W].

    ``light``: crops, flips, turns and colour jitter (the recipe of marrowscope 0.1).
    ``lab``: also what differs between laboratories (:mod:`marrowscope.fit.augment`): zoom in and out
    with mirrored fill, stain (HED) jitter, background tint, stronger colour jitter, blur and JPEG.
    ``lab-sharp``: ``lab`` with sharpening as well (README, "Other labs": it helped another lab's
    images and may cost blasts; not yet the bundled model's recipe).
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    size = tuple(data_config["input_size"][1:])
    lab = augment != "light"
    # Geometry and colour run on the PIL image (SIMD resize; colour as one matrix) before the
    # tensor conversion: on tensors the hue jitter alone costs several ms per image.
    steps = [ScaleJitter((0.6, 1.25)), HEDJitter(), BackgroundTint()] if lab else []
    steps += [
        v2.RandomResizedCrop(size, scale=(0.85, 1.0) if lab else scale, ratio=(0.85, 1.18), antialias=True,
                             interpolation=v2.InterpolationMode.BICUBIC),
        v2.RandomHorizontalFlip(),
        RandomRot90(),
        ColourJitter(brightness=color, contrast=color, saturation=color + 0.1 * lab, hue=hue + 0.02 * lab),
    ]
    steps += [FocusOrJpeg(**focus_settings(augment == "lab-sharp"))] if lab else []
    return v2.Compose([*steps, v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(mean=list(data_config["mean"]), std=list(data_config["std"]))])


def data_config_for(net, img_size: int) -> dict:
    """The preprocessing a network expects at ``img_size``: timm's mean/std, whole-crop resize."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(net)
    return {
        "input_size": (3, img_size, img_size),
        "interpolation": "bicubic",
        "mean": tuple(float(m) for m in cfg["mean"]),
        "std": tuple(float(s) for s in cfg["std"]),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }

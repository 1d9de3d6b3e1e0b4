"""Train and eval transforms, resolved from the model's data config (timm) so they cannot drift.

Eval: timm's own ``create_transform`` with the model folder's input size, mean, std,
interpolation and ``crop_pct`` (1.0: the whole crop, cells are centred).
Train: augmentation suited to cell crops; a cell has no up, down or handedness, so flips and
90-degree rotations are free; stain and background hue vary between slides, so colour jitter;
a mild scale change covers magnification drift.
"""

from __future__ import annotations

import random

import torch
from timm.data import create_transform
from torchvision.transforms import v2


def eval_transform(data_config: dict):
    """PIL RGB image -> normalised float tensor [3, H, W], exactly as in the model folder."""
    return create_transform(
        input_size=tuple(data_config["input_size"]),
        interpolation=data_config.get("interpolation", "bicubic"),
        mean=tuple(data_config["mean"]),
        std=tuple(data_config["std"]),
        crop_pct=data_config.get("crop_pct", 1.0),
        crop_mode=data_config.get("crop_mode", "center"),
        is_training=False,
    )


def eval_geometry(data_config: dict):
    """The eval transform's resize and centre crop alone (PIL -> PIL): the pixels the network sees,
    for drawing Grad-CAM over exactly them."""
    from torchvision import transforms as T

    steps = eval_transform(data_config).transforms
    return T.Compose([s for s in steps if isinstance(s, (T.Resize, T.CenterCrop))])


class RandomRot90(torch.nn.Module):
    """Rotate by 0, 90, 180 or 270 degrees: exact, no interpolation, no filled corners."""

    def forward(self, img):
        k = random.randrange(4)
        return v2.functional.rotate(img, 90 * k) if k else img


def train_transform(data_config: dict, *, scale: tuple[float, float] = (0.75, 1.0), color: float = 0.25,
                    hue: float = 0.04):
    """PIL RGB image -> augmented, normalised float tensor [3, H, W]."""
    size = tuple(data_config["input_size"][1:])
    # Geometry and colour run on the PIL image (SIMD resize, fast HSV) before the tensor
    # conversion: on tensors the hue jitter alone costs several ms per image.
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=scale, ratio=(0.85, 1.18), antialias=True,
                             interpolation=v2.InterpolationMode.BICUBIC),
        v2.RandomHorizontalFlip(),
        RandomRot90(),
        v2.ColorJitter(brightness=color, contrast=color, saturation=color, hue=hue),
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(data_config["mean"]), std=list(data_config["std"])),
    ])


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

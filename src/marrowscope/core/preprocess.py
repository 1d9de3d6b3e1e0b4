"""The one inference preprocessing, resolved from the model folder's data config (timm) so that
training's validation, ``predict``, ``evaluate``, the app and the exports cannot drift.

Eval: timm's own ``create_transform`` with the model folder's input size, mean, std, interpolation
and ``crop_pct`` (1.0: the whole crop, cells are centred); before it, the training scale
(:mod:`marrowscope.core.scale`); after its resize and crop, focus matching
(:mod:`marrowscope.core.focus`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from timm.data import create_transform
from torchvision import transforms as T

from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.focus import MatchFocus
from marrowscope.core.scale import ToTrainingScale


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


class Preprocess:
    """The one inference preprocessing: decoded image -> training scale and field of view (when the
    model folder records its training pixel size, :mod:`marrowscope.core.scale`) -> the eval transform's
    resize and crop -> softened to the training images' sharpness if far crisper (when the folder
    records it, :mod:`marrowscope.core.focus`) -> normalised tensor.

    Calling it returns (tensor [3, H, W], the image's :class:`~marrowscope.core.scale.Scale` or None, the
    blur in px focus matching gave it: 0.0 if none, None without focus settings).
    """

    def __init__(self, data_config: dict, scale: Optional[dict] = None, pixel_size: Optional[float] = None,
                 focus: Optional[dict] = None):
        self.scale = scale
        self.pixel_size = self.check_pixel_size(pixel_size)
        self.focus = MatchFocus.from_settings(focus)
        # focus matching goes between the two: on the pixels the network sees
        self.geometry_only, self.to_tensor = eval_split(data_config)

    @classmethod
    def for_model(cls, info, pixel_size: Optional[float] = None) -> "Preprocess":
        """The preprocessing a model folder (:class:`~marrowscope.core.artifacts.ModelInfo`) asks for."""
        return cls(info.data_config, info.scale, pixel_size, info.focus)

    def check_pixel_size(self, pixel_size: Optional[float]) -> Optional[float]:
        """A user's pixel size (µm per pixel), checked; None or 0 means: estimate it."""
        if not pixel_size:
            return None
        if not self.scale:
            raise MarrowscopeError("this model folder records no training pixel size, so a pixel size cannot be "
                                   "used with it; run `marrowscope fit-checks` on it first.")
        if not 0.01 <= pixel_size <= 2.0:
            raise MarrowscopeError(f"a pixel size of {pixel_size} µm is outside 0.01-2; light microscopes image "
                                   "cells at about 0.05-0.5 µm per pixel.")
        return float(pixel_size)

    def to_scale(self, image, pixel_size: Optional[float] = None, zoom: float = 1.0):
        """(the image at the training scale and field, times ``zoom``; its Scale); the image as it is, and
        None, for a model folder that records no training scale."""
        if not self.scale:
            return image, None
        given = self.check_pixel_size(pixel_size) or self.pixel_size
        return ToTrainingScale(self.scale["pixel_size_um"], self.scale["field_px"], given, zoom)(image)

    def to_input_size(self, image, pixel_size: Optional[float] = None, zoom: float = 1.0):
        """(the image at the training scale, resized and cropped to the network's input: what focus
        matching measures, and is fitted on; the image's Scale or None)."""
        image, scale = self.to_scale(image, pixel_size, zoom)
        return self.geometry_only(image), scale

    def view(self, image, pixel_size: Optional[float] = None, zoom: float = 1.0):
        """(the pixels the network sees as a PIL image, the image's Scale or None, the focus blur or None)."""
        image, scale = self.to_input_size(image, pixel_size, zoom)
        seen, blur = self.focus(image) if self.focus else (image, None)
        return seen, scale, blur

    def __call__(self, image, pixel_size: Optional[float] = None, zoom: float = 1.0):
        seen, scale, blur = self.view(image, pixel_size, zoom)
        return self.to_tensor(seen), scale, blur

    def tensor(self, image):
        """The network's input alone: what training's validation reads, through the path predict ships."""
        return self(image)[0]

    def geometry(self, image, pixel_size: Optional[float] = None):
        """The pixels the network sees, as a PIL image (for drawing Grad-CAM over them)."""
        return self.view(image, pixel_size)[0]


def eval_split(data_config: dict):
    """The eval transform in two: (its resize and centre crop, PIL -> PIL: the pixels the network
    sees; the rest, PIL -> normalised tensor, as :class:`NormalisedTensor` where the rest is timm's
    tensor conversion and normalisation, as it is for every timm eval transform we build)."""
    steps = eval_transform(data_config).transforms
    geometry = [s for s in steps if isinstance(s, (T.Resize, T.CenterCrop))]
    rest = [s for s in steps if s not in geometry]
    if len(rest) == 2 and isinstance(rest[0], T.ToTensor) and isinstance(rest[1], T.Normalize):
        return T.Compose(geometry), NormalisedTensor(rest[1].mean, rest[1].std)
    return T.Compose(geometry), T.Compose(rest)


class NormalisedTensor:
    """PIL RGB image -> [3, H, W] float32 tensor, (pixel / 255 - mean) / std: the same numbers as
    torchvision's ToTensor and Normalize (the same float32 operations in the same order), computed in
    numpy. Why: torch's element-wise kernels here left its worker threads spinning while ONNX Runtime's
    threads ran the network, and on 2 cores that slowed the forward pass of a single image by several ms
    (README, "Speed"); numpy runs them on the calling thread."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, np.float32).reshape(1, 1, -1)
        self.std = np.asarray(std, np.float32).reshape(1, 1, -1)

    def __call__(self, image) -> torch.Tensor:
        pixels = np.asarray(image, dtype=np.float32) / np.float32(255)
        return torch.from_numpy(np.ascontiguousarray(((pixels - self.mean) / self.std).transpose(2, 0, 1)))

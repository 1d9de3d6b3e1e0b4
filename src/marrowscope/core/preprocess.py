"""The one inference preprocessing, resolved from the model folder's data config (timm) so that
training's validation, ``predict``, ``evaluate``, the app and the exports cannot drift.

Eval: timm's eval transform for the model folder's input size, mean, std, interpolation and
``crop_pct`` (1.0: the whole crop, cells are centred); before it, the training scale
(:mod:`marrowscope.core.scale`); after its resize and crop, focus matching
(:mod:`marrowscope.core.focus`). For the centre-crop layout every model folder of marrowscope has,
the same resize, crop and normalisation run in PIL and numpy (:class:`EvalGeometry`,
:class:`NormalisedArray`; the tests compare them with timm's transform bit for bit), so that the ONNX
inference path imports neither torch nor timm.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from PIL import Image

from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.focus import MatchFocus
from marrowscope.core.scale import ToTrainingScale

PIL_INTERPOLATION = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                     "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}


def eval_transform(data_config: dict):
    """PIL RGB image -> normalised float tensor [3, H, W]: timm's own eval transform of the model folder
    (training's fallback, and what :func:`eval_split` is checked against)."""
    from timm.data import create_transform  # torch and timm: only where a tensor pipeline is wanted

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

    Calling it returns (float32 array [3, H, W], the image's :class:`~marrowscope.core.scale.Scale` or
    None, the blur in px focus matching gave it: 0.0 if none, None without focus settings).
    """

    def __init__(self, data_config: dict, scale: Optional[dict] = None, pixel_size: Optional[float] = None,
                 focus: Optional[dict] = None, lab_pixel_size: Optional[float] = None):
        self.scale = scale
        self.pixel_size = self.check_pixel_size(pixel_size)
        # where an image's own red cells give no estimate: its lab's pooled pixel size, if the folder knows it
        self.lab_pixel_size = lab_pixel_size
        self.focus = MatchFocus.from_settings(focus)
        # focus matching goes between the two: on the pixels the network sees
        self.geometry_only, self.to_array = eval_split(data_config)

    @classmethod
    def for_model(cls, info, pixel_size: Optional[float] = None) -> "Preprocess":
        """The preprocessing a model folder (:class:`~marrowscope.core.artifacts.ModelInfo`) asks for."""
        lab_um = (info.label_free or {}).get("pixel_size_um")  # a lab's pixel size, pooled over its folder
        return cls(info.data_config, info.scale, pixel_size, info.focus, lab_um)

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
        return ToTrainingScale(self.scale["pixel_size_um"], self.scale["field_px"], given, zoom,
                               self.lab_pixel_size)(image)

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
        return self.to_array(seen), scale, blur

    def tensor(self, image):
        """The network's input alone, as a torch tensor: what training's validation reads, through the path
        predict ships."""
        import torch

        return torch.from_numpy(self(image)[0])

    def geometry(self, image, pixel_size: Optional[float] = None):
        """The pixels the network sees, as a PIL image (for drawing Grad-CAM over them)."""
        return self.view(image, pixel_size)[0]


def eval_split(data_config: dict):
    """The eval transform in two: (its resize and centre crop, PIL -> PIL: the pixels the network sees;
    the rest, PIL -> normalised float32 array [3, H, W]). In PIL and numpy for the centre-crop layout
    (:class:`EvalGeometry`, :class:`NormalisedArray`), else timm's own steps."""
    if EvalGeometry.handles(data_config):
        return EvalGeometry(data_config), NormalisedArray(data_config["mean"], data_config["std"])
    from torchvision import transforms as T

    steps = eval_transform(data_config).transforms
    geometry = [s for s in steps if isinstance(s, (T.Resize, T.CenterCrop))]
    rest = T.Compose([s for s in steps if s not in geometry])
    return T.Compose(geometry), lambda image: rest(image).numpy()


class EvalGeometry:
    """timm's eval resize and centre crop (``crop_mode`` center) of a PIL image, in PIL: the shorter side
    resized to floor(size / crop_pct) as torchvision's ``Resize(int)`` computes it, then the centre
    ``size`` cropped as torchvision's ``CenterCrop`` rounds it. The same PIL calls, so the same pixels."""

    def __init__(self, data_config: dict):
        self.height, self.width = (int(s) for s in data_config["input_size"][1:])
        self.scale = math.floor(self.height / (data_config.get("crop_pct") or 0.875))
        self.resample = PIL_INTERPOLATION[data_config.get("interpolation", "bicubic")]

    @staticmethod
    def handles(data_config: dict) -> bool:
        h, w = data_config["input_size"][1:]
        return (data_config.get("crop_mode") in (None, "center") and h == w
                and data_config.get("interpolation", "bicubic") in PIL_INTERPOLATION
                and math.floor(h / (data_config.get("crop_pct") or 0.875)) >= h)

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.scale, int(self.scale * long / short)
        size = (new_short, new_long) if w <= h else (new_long, new_short)
        if size != (w, h):
            image = image.resize(size, self.resample)
        w, h = image.size
        if (w, h) == (self.width, self.height):
            return image
        top, left = int(round((h - self.height) / 2.0)), int(round((w - self.width) / 2.0))
        return image.crop((left, top, left + self.width, top + self.height))


class NormalisedArray:
    """PIL RGB image -> [3, H, W] float32 array, (pixel / 255 - mean) / std: the same numbers as
    torchvision's ToTensor and Normalize (the same float32 operations in the same order), computed in
    numpy. Why: the ONNX path needs no torch, and on 2 cores torch's element-wise kernels had left its
    worker threads spinning while ONNX Runtime's threads ran the network, slowing a single image by
    several ms (docs, "Speed")."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, np.float32).reshape(1, 1, -1)
        self.std = np.asarray(std, np.float32).reshape(1, 1, -1)

    def __call__(self, image) -> np.ndarray:
        pixels = np.asarray(image, dtype=np.float32) / np.float32(255)
        return np.ascontiguousarray(((pixels - self.mean) / self.std).transpose(2, 0, 1))

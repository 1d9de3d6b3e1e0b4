"""Grad-CAM: where in the cell the network looked for the class it chose (pytorch-grad-cam)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from marrowscope.core.artifacts import load_model_folder
from marrowscope.core.images import ImageSource, decode_image
from marrowscope.core.model import gradcam_target_layer
from marrowscope.core.preprocess import Preprocess


class Explainer:
    """Grad-CAM heatmaps of a model folder's network (always PyTorch: gradients are needed). For networks
    whose head is average pooling and one linear layer, :class:`marrowscope.core.cam.OnnxCam` gives the
    same map without torch; this is for the others, and for folders without the ONNX feature maps."""

    name = "Grad-CAM (pytorch-grad-cam)"
    ready = True

    def __init__(self, model_dir: str | Path, pixel_size: Optional[float] = None):
        from pytorch_grad_cam import GradCAM

        self.net, self.info = load_model_folder(model_dir)
        self.preprocess = Preprocess.for_model(self.info, pixel_size)  # as the Predictor's
        self.geometry = self.preprocess.geometry
        self.cam = GradCAM(model=self.net, target_layers=[gradcam_target_layer(self.net)])
        self._lock = threading.Lock()  # the CAM's hooks hold per-call state

    def heatmap(self, src: ImageSource, class_index: Optional[int] = None,
                pixel_size: Optional[float] = None) -> tuple[np.ndarray, int]:
        """A [H, W] map in [0, 1] at the model's input size, for ``class_index`` (default: the most probable)."""
        return self._heatmap(self.geometry(decode_image(src), pixel_size), class_index)

    def _heatmap(self, seen: Image.Image, class_index: Optional[int]) -> tuple[np.ndarray, int]:
        """The map of the pixels the network sees (``Preprocess.geometry``)."""
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        x = torch.from_numpy(self.preprocess.to_array(seen))[None]
        with self._lock:
            if class_index is None:
                with torch.no_grad():
                    class_index = int(self.net(x).argmax(1))
            cam = self.cam(input_tensor=x, targets=[ClassifierOutputTarget(class_index)])[0]
        return cam, class_index

    def overlay(self, src: ImageSource, class_index: Optional[int] = None, weight: float = 0.55,
                pixel_size: Optional[float] = None) -> Image.Image:
        """The cell as the network saw it (training scale, the eval transform's resize and crop, and
        focus matching, so the map lines up on non-square images too) with the heatmap blended over it
        (red: most evidence)."""
        from pytorch_grad_cam.utils.image import show_cam_on_image

        # prepared once (the red-cell estimate is the costly part), then mapped and drawn on the same pixels
        seen = self.geometry(decode_image(src), pixel_size)
        cam, _ = self._heatmap(seen, class_index)
        rgb = np.asarray(seen, dtype=np.float32) / 255.0
        return Image.fromarray(show_cam_on_image(rgb, cam, use_rgb=True, image_weight=weight))

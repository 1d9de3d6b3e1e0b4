"""The white-cell detector's network: torchvision's FCOS on a timm backbone with a feature pyramid.

Only the PyTorch detector backend, training and the ONNX export import this module (it imports torch,
torchvision and timm); counting through ONNX Runtime does not. FCOS because it is anchor-free: a white
cell is one round object whose size varies two-fold between classes, and there are no anchor shapes to
tune. Heads, losses, box decoding and NMS are torchvision's.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import timm
import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from marrowscope.core.model import create_network

FPN_CHANNELS = 96  # narrower than torchvision's 256: one object class, and it must stay fast on a CPU


class PyramidBackbone(nn.Module):
    """A timm network's stride 8, 16 and 32 features, a feature pyramid over them, and P6-P7."""

    def __init__(self, arch: str, pretrained: bool):
        super().__init__()
        self.body = timm.create_model(arch, features_only=True, out_indices=(2, 3, 4), pretrained=False)
        if pretrained:  # the classifier's loader knows the offline ImageNet weights and their key names
            full = create_network(arch, 1, pretrained=True).state_dict()
            self.body.load_state_dict({k: v for k, v in full.items() if k in self.body.state_dict()})
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), FPN_CHANNELS,
                                         extra_blocks=LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS))
        self.out_channels = FPN_CHANNELS

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))


def build_detector(arch: str, tile: int, pretrained: bool = False) -> FCOS:
    """FCOS for one class (label 1: a white cell) on ``tile`` x ``tile`` inputs in [0, 1].

    min_size = max_size = tile: torchvision's transform then leaves a tile at its size, so the network
    sees cells at the detection scale the tiles were drawn at."""
    return FCOS(PyramidBackbone(arch, pretrained), num_classes=2, min_size=tile, max_size=tile,
                image_mean=[0.5] * 3, image_std=[0.5] * 3,  # the Lite networks' own normalisation
                score_thresh=0.05, nms_thresh=0.5, detections_per_img=100, topk_candidates=400)


def network_tile_boxes(net: FCOS, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[T, T, 3] in [0, 1] -> (boxes [K, 4] in tile pixels, scores [K]) of the network in eval mode."""
    with torch.inference_mode():
        out = net([torch.from_numpy(np.ascontiguousarray(tile.transpose(2, 0, 1)))])[0]
    return out["boxes"].numpy(), out["scores"].numpy()


class TileOutputs(nn.Module):
    """[1, 3, T, T] -> (boxes [K, 4] in tile pixels, scores [K]): the form the ONNX file exports."""

    def __init__(self, net: FCOS):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(list(x))[0]
        return out["boxes"], out["scores"]

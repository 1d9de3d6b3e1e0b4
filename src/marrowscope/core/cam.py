"""Class activation maps without torch: the ONNX file's last feature maps and the head's weights, in numpy.

For a network whose head is global average pooling then one linear layer (the bundled EfficientNet-Lite0,
ReXNet, ResNets: :func:`marrowscope.core.model.cam_head`), the map of class c, sum_k w_ck A_k, is exact:
its average over the map is the class's logit less the bias (Zhou et al. 2016). Grad-CAM's weights on
that layer are the same w_ck divided by the map's area, so after the ReLU and rescaling both give the same
map (``bench/cam_agreement.py`` measures their correlation). ``export-onnx`` adds the maps as the output
``feature_maps`` where this holds; elsewhere the app falls back to Grad-CAM (pytorch-grad-cam).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from PIL import Image

from marrowscope.core.images import ImageSource, decode_image

MAPS_OUTPUT = "feature_maps"
CAM_KEY = "cam_head"  # config.json: the linear layer's name in the weights, written by export-onnx


def colour_blend(rgb: np.ndarray, cam: np.ndarray, weight: float = 0.55) -> Image.Image:
    """``rgb`` [H, W, 3] in [0, 1] with ``cam`` [H, W] in [0, 1] blended over it in the jet colour map
    (red: most evidence), as pytorch-grad-cam's ``show_cam_on_image`` draws Grad-CAM."""
    from matplotlib import colormaps

    heat = colormaps["jet"](cam)[..., :3]
    out = weight * rgb + (1 - weight) * heat
    return Image.fromarray((out / out.max() * 255).astype(np.uint8))


class OnnxCam:
    """Class activation maps of a :class:`~marrowscope.core.predict.Predictor` on the ONNX backend whose file
    has the ``feature_maps`` output. ``name`` says which method the app shows."""

    name = "class activation map (exact for this network; no PyTorch needed)"
    ready = True

    def __init__(self, predictor):
        from safetensors.numpy import load_file

        self.predictor = predictor
        head = predictor.info.extra[CAM_KEY]
        weights = load_file(str(predictor.model_dir / "model.safetensors"))
        self.w = weights[f"{head}.weight"].astype(np.float32)  # [C, K]

    @staticmethod
    def available(predictor) -> bool:
        session = getattr(predictor, "session", None)
        return (session is not None and bool(predictor.info.extra.get(CAM_KEY))
                and MAPS_OUTPUT in [o.name for o in session.get_outputs()])

    def heatmap(self, array: np.ndarray, class_index: Optional[int] = None) -> tuple[np.ndarray, int]:
        """[3, H, W] network input -> ([h, w] map of ``class_index`` in [0, 1] (ReLU, then scaled by its max),
        that class); without ``class_index``, of the top class, from the same run of the network."""
        p = self.predictor
        feed = {p.input_name: array[None].astype(np.float32)}
        if class_index is None:
            logits, maps = p.session.run(["logits", MAPS_OUTPUT], feed)
            class_index = int(logits[0].argmax())
        else:
            (maps,) = p.session.run([MAPS_OUTPUT], feed)
        cam = np.maximum(np.tensordot(self.w[class_index], maps[0], axes=1), 0)
        return (cam / cam.max() if cam.max() > 0 else cam), class_index

    def overlay(self, src: ImageSource, class_index: Optional[int] = None, weight: float = 0.55,
                pixel_size: Optional[float] = None) -> Image.Image:
        """The cell as the network saw it, with the map of ``class_index`` (default: the top class) over it."""
        p = self.predictor
        seen, _, _ = p.preprocess.view(decode_image(src), pixel_size)
        cam, _ = self.heatmap(p.preprocess.to_array(seen), class_index)
        cam = np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize(seen.size, Image.BILINEAR))
        return colour_blend(np.asarray(seen, dtype=np.float32) / 255.0, cam.clip(0, 1), weight)

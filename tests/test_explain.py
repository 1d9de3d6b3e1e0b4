"""Grad-CAM: the overlay is drawn on exactly the pixels the network saw, square or not."""

import numpy as np
import pytest
from PIL import Image

from marrowscope.report.explain import Explainer


@pytest.fixture(scope="module")
def explainer(tiny_model):
    return Explainer(tiny_model)


def _three_bands(w: int, h: int) -> Image.Image:
    """Red left third, green middle third, blue right third."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 3, 0] = 255
    a[:, w // 3: 2 * w // 3, 1] = 255
    a[:, 2 * w // 3:, 2] = 255
    return Image.fromarray(a)


def test_overlay_lines_up_with_the_centre_crop_of_a_wide_image(explainer):
    side = explainer.info.data_config["input_size"][1]
    wide = _three_bands(3 * side, side)
    # the network sees the centre crop: the green band only
    seen = np.asarray(explainer.geometry(wide))
    assert seen.shape[:2] == (side, side) and (seen[..., 1] > 200).mean() > 0.9
    overlay = np.asarray(explainer.overlay(wide, weight=1.0))  # image only, no heatmap
    assert overlay.shape[:2] == (side, side)
    # resizing the whole image instead would put red on the left edge and blue on the right
    for column in (overlay[:, 0], overlay[:, -1]):
        assert (column[:, 1] > column[:, 0]).all() and (column[:, 1] > column[:, 2]).all()


def test_geometry_is_the_transform_before_the_tensor(explainer):
    import torch
    from torchvision.transforms import v2

    tall = _three_bands(40, 90)
    cfg = explainer.info.data_config
    via_geometry = v2.Normalize(list(cfg["mean"]), list(cfg["std"]))(
        v2.ToDtype(torch.float32, scale=True)(v2.PILToTensor()(explainer.geometry(tall))))
    assert torch.allclose(via_geometry, torch.from_numpy(explainer.preprocess(tall)[0]), atol=1e-5)


def test_heatmap_shape_and_range(explainer):
    cam, cls = explainer.heatmap(_three_bands(48, 48))
    assert cam.shape == tuple(explainer.info.data_config["input_size"][1:])
    assert 0 <= cam.min() and cam.max() <= 1 and 0 <= cls < len(explainer.info.classes)


def test_the_bundled_explanation_needs_no_torch(tmp_path):
    """The app's map for the bundled model comes from its ONNX file: drawn without torch, timm or grad-cam."""
    import subprocess
    import sys

    from marrowscope.core.artifacts import DEFAULT_MODEL
    from tests.conftest import synthetic_cell

    if not (DEFAULT_MODEL / "model.onnx").is_file():
        pytest.skip("the bundled model's ONNX file is not in this installation")
    synthetic_cell(2, 7, size=96).save(tmp_path / "cell.png")
    code = ("import sys\n"
            "from marrowscope.apps.app_models import explainer_for\n"
            "from marrowscope.core.predict import Predictor\n"
            "e = explainer_for(Predictor())\n"
            f"assert e.overlay({str(tmp_path / 'cell.png')!r}).size[0] > 100\n"
            "print(type(e).__name__, sorted(m for m in ('torch', 'timm', 'pytorch_grad_cam') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "OnnxCam []"

"""Exports that check themselves: ONNX (compared with PyTorch) and a Hugging Face Space folder."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from marrowscope.core.artifacts import load_model_folder, resolve_model_dir
from marrowscope.core.classes import CLASSES
from marrowscope.core.data import default_data_dir
from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.images import ImageSource, collect_images, decode_image
from marrowscope.core.manifest import read_manifest
from marrowscope.core.model import WithFeatures
from marrowscope.core.predict import probs_from_logits
from marrowscope.core.preprocess import Preprocess


def export_onnx(model_dir: str | Path, images: Sequence[ImageSource] = (), opset: int = 18,
                atol: float = 1e-4) -> tuple[Path, float]:
    """Write ``model.onnx`` (dynamic batch) into the model folder and check it against PyTorch.

    The check runs both on ``images`` (real cells where given, else random input) and compares
    softmax probabilities; the file is kept only when they agree within ``atol``.

    Returns:
        the ONNX path and the largest probability difference seen.
    """
    import onnxruntime as ort


    model_dir = Path(model_dir)
    net, info = load_model_folder(model_dir)
    net = WithFeatures(net).eval()  # outputs logits and the pooled features of the domain check
    h, w = info.data_config["input_size"][1:]
    if images:
        preprocess = Preprocess.for_model(info)  # the Predictor's own preprocessing
        x = torch.stack([preprocess(decode_image(im))[0] for im in images])
    else:
        x = torch.randn(4, 3, h, w)
    tmp = model_dir / "model.onnx.tmp"
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(net, (x[:2],), str(tmp), input_names=["image"], output_names=["logits", "features"],
                      opset_version=opset, dynamic_shapes={"x": {0: batch}}, dynamo=True, external_data=False,
                      verbose=False)
    _drop_stack_traces(tmp)
    sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        ref = torch.softmax(net(x)[0], 1).numpy()
    got = probs_from_logits(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0][None])
    diff = float(np.abs(got - ref).max())
    if diff > atol:
        tmp.unlink()
        raise MarrowscopeError(f"ONNX export of '{model_dir}' disagrees with PyTorch by {diff:.2e} (> {atol}); "
                               "not written.")
    out = model_dir / "model.onnx"
    tmp.replace(out)
    return out, diff


STACK_TRACE = "pkg.torch.onnx.stack_trace"


def _drop_stack_traces(path: Path) -> None:
    """The exporter records each node's Python stack trace, which names the files of the machine that
    exported it; the model file should not. Everything else (names, scopes) stays."""
    import onnx

    model = onnx.load(str(path))
    for node in [*model.graph.node, *(n for f in model.functions for n in f.node)]:
        kept = [p for p in node.metadata_props if p.key != STACK_TRACE]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(model, str(path))


SPACE_APP = '''\
"""Hugging Face Space entry point: serves marrowscope's app on the model folder beside it."""
import os

from marrowscope.apps.app import launch

if __name__ == "__main__":
    # Spaces set GRADIO_SERVER_NAME=0.0.0.0; run locally it stays on this machine only.
    launch("model", host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
           port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), examples_dir="examples")
'''

SPACE_REQUIREMENTS = """\
torch
torchvision
timm>=1.0.20
safetensors
numpy
scipy
pillow
matplotlib
grad-cam>=1.5
onnxruntime
gradio=={gradio}
"""


def export_space(model_dir: Optional[str | Path], out_dir: str | Path,
                 examples: Sequence[str | Path] = ()) -> Path:
    """Write a folder that runs as a Gradio Space: ``app.py``, ``requirements.txt``, ``README.md``
    with the Space metadata, the ``marrowscope`` package and the model folder (``model/``)."""
    import gradio


    src = resolve_model_dir(model_dir)
    _, info = load_model_folder(src)  # refuse to ship a broken model folder
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise MarrowscopeError(f"'{out}' exists and is not empty; choose a new folder for the Space.")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, out / "model", ignore=shutil.ignore_patterns("*.tmp", "predictions.csv"))
    pkg = Path(__file__).resolve().parents[1]  # the whole marrowscope package
    shutil.copytree(pkg, out / "marrowscope", ignore=shutil.ignore_patterns("__pycache__"))
    if examples:
        (out / "examples").mkdir()
        for e in examples:
            target = out / "examples" / Path(e).parent.name
            target.mkdir(exist_ok=True)
            shutil.copy(e, target)
    (out / "app.py").write_text(SPACE_APP)
    (out / "requirements.txt").write_text(SPACE_REQUIREMENTS.format(gradio=gradio.__version__))
    (out / "README.md").write_text(textwrap.dedent(f"""\
        ---
        title: marrowscope
        emoji: 🔬
        colorFrom: indigo
        colorTo: pink
        sdk: gradio
        sdk_version: {gradio.__version__}
        app_file: app.py
        pinned: false
        license: apache-2.0
        ---

        # marrowscope: bone-marrow cell classifier

        Upload a single-cell crop of a May-Grünwald-Giemsa stained bone-marrow smear; the app shows
        the three most likely of {len(info.classes)} cell types ({", ".join(info.classes)}), a Grad-CAM
        map, batch differential counts and the model's test metrics. Research and education only;
        not a medical device. Model: `{info.architecture}`; see `model/MODEL_CARD.md`.

        Trained on images of the Bone Marrow Cytomorphology collection (Matek et al., 2021, CC BY 4.0):
        Matek C. et al., Blood 138(20):1917-1927, https://doi.org/10.1182/blood.2020010568 and
        https://doi.org/10.7937/TCIA.AXH3-T579
        """))
    return out


def check_images(paths: Optional[Sequence[str | Path]], limit: int = 64) -> list[Path]:
    """Real images to check an export on: the ones named (files or folders), else one per class of
    the default data folder where present; empty means random input."""
    images = collect_images(paths)[0] if paths else []
    if not images and default_data_dir():
        images = [f for c in CLASSES for f in sorted((default_data_dir() / c).glob("*.jpg"))[:1]]
    return images[:limit]


def int8_calibration_images(model_dir: Path, n: int, data_root: Optional[str] = None) -> list[Path]:
    """``n`` training images of the model's manifest, spread over it (never validation or test)."""
    manifest = model_dir / "manifest.csv"
    train = [s.path for s in read_manifest(manifest, data_root) if s.split == "train"] if manifest.is_file() else []
    if not train:
        raise MarrowscopeError(f"--int8 calibrates on the training images of '{manifest}', which has none.")
    return train[:: max(1, len(train) // n)][:n]


def export_int8(model_dir: str | Path, calibration: Sequence[ImageSource], name: str = "model.int8.onnx") -> Path:
    """Static INT8 quantisation of ``model.onnx`` with ONNX Runtime (QDQ, per-channel weights),
    its activation ranges calibrated on ``calibration`` images (training images, never test).

    Whether to ship it is a measurement: compare ``evaluate --backend onnx-int8`` with
    ``--backend onnx`` on the test split.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model_dir = Path(model_dir)
    fp32 = model_dir / "model.onnx"
    if not fp32.is_file():
        raise MarrowscopeError(f"'{fp32}' is missing; run `marrowscope export-onnx {model_dir}` first.")
    if not calibration:
        raise MarrowscopeError("INT8 calibration needs images (training images of the model's manifest).")
    _, info = load_model_folder(model_dir)
    preprocess = Preprocess.for_model(info)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            for src in self.it:
                return {"image": preprocess(decode_image(src))[0].unsqueeze(0).numpy()}
            return None

    pre = model_dir / "model.pre.onnx.tmp"
    tmp = model_dir / (name + ".tmp")
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        out = model_dir / name
        tmp.replace(out)
    finally:
        for p in (pre, tmp):
            p.unlink(missing_ok=True)
    return out

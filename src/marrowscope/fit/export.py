"""Exports that check themselves: ONNX (compared with PyTorch) and a Hugging Face Space folder."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from marrowscope.core.artifacts import load_model_folder, resolve_model_dir, write_settings
from marrowscope.core.cam import CAM_KEY, MAPS_OUTPUT
from marrowscope.core.classes import CLASSES
from marrowscope.core.data import default_data_dir
from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.images import ImageSource, collect_images, decode_image
from marrowscope.core.manifest import read_manifest
from marrowscope.core.model import WithFeatures, cam_head
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
    head = cam_head(net)  # where the head allows it, the last feature maps too: explanations without torch
    net = WithFeatures(net, maps=head is not None).eval()  # logits and the domain check's pooled features
    h, w = info.data_config["input_size"][1:]
    if images:
        preprocess = Preprocess.for_model(info)  # the Predictor's own preprocessing
        x = torch.from_numpy(np.stack([preprocess(decode_image(im))[0] for im in images]))
    else:
        x = torch.randn(4, 3, h, w)
    tmp = model_dir / "model.onnx.tmp"
    batch = torch.export.Dim("batch", min=1, max=1024)
    names = ["logits", "features"] + ([MAPS_OUTPUT] if head else [])
    torch.onnx.export(net, (x[:2],), str(tmp), input_names=["image"], output_names=names,
                      opset_version=opset, dynamic_shapes={"x": {0: batch}}, dynamo=True, external_data=False,
                      verbose=False)
    _drop_stack_traces(tmp)
    sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        ref = torch.softmax(net(x)[0], 1).numpy()
    got = probs_from_logits(sess.run(["logits"], {sess.get_inputs()[0].name: x.numpy()})[0][None])
    diff = float(np.abs(got - ref).max())
    if diff > atol:
        tmp.unlink()
        raise MarrowscopeError(f"ONNX export of '{model_dir}' disagrees with PyTorch by {diff:.2e} (> {atol}); "
                               "not written.")
    out = model_dir / "model.onnx"
    tmp.replace(out)
    write_settings(model_dir, **{CAM_KEY: head})
    # an INT8 model made from the previous file no longer matches it
    (model_dir / "model.int8.onnx").unlink(missing_ok=True)
    if info.extra.get("int8"):
        write_settings(model_dir, int8=None)
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

# A folder whose ONNX file gives the class activation map serves everything but Adapt without PyTorch:
# a light Space (no 5 GB CUDA build of torch for a CPU model).
SPACE_REQUIREMENTS_LIGHT = """\
numpy
scipy
pillow
matplotlib
safetensors
onnxruntime
gradio=={gradio}
"""

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
    light = (src / "model.onnx").is_file() and bool(info.extra.get(CAM_KEY)) and (
        not (src / "detector").is_dir() or (src / "detector" / "model.onnx").is_file())
    (out / "requirements.txt").write_text((SPACE_REQUIREMENTS_LIGHT if light else SPACE_REQUIREMENTS).format(
        gradio=gradio.__version__))
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
        the three most likely of {len(info.classes)} cell types ({", ".join(info.classes)}), a map of
        where the model looked, batch differential counts, whole-field counts and the model's test
        metrics. Research and education only; not a medical device. Model: `{info.architecture}`; see
        `model/MODEL_CARD.md`.

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


def int8_images(model_dir: Path, n: int, data_root: Optional[str] = None, train: bool = True) -> list[Path]:
    """``n`` images of the model's manifest, spread over it: training images (to calibrate INT8 on), or with
    ``train`` False the others (to check it on images the calibration did not see)."""
    manifest = model_dir / "manifest.csv"
    rows = read_manifest(manifest, data_root) if manifest.is_file() else []
    found = [s.path for s in rows if (s.split == "train") == train]
    if not found:
        raise MarrowscopeError(f"--int8 needs {'training' if train else 'validation or test'} images in "
                               f"'{manifest}', which has none.")
    return found[:: max(1, len(found) // n)][:n]


# Static INT8 layouts (activations, weights, reduce_range). ONNX Runtime runs u8s8 on x86-64 CPUs
# without VNNI through an instruction whose 16-bit sums can saturate: on one such CPU the test model's
# INT8 probabilities were 0.33 away from fp32 (ORT's quantisation guide names the fixes: reduce_range,
# or u8u8). Measured on this project's 2-core AMD EPYC (AVX-512, no VNNI; experiments/int8_formats.py,
# the bundled model, 100 calibration and 100 check images): u8s8 0.064 and s8s8 0.059 largest
# probability difference, the same top class for all; u8s8-reduced 0.229 and 97%; u8u8 0.098 and 99% but
# about 9x slower than fp32 (no fast kernel), so it is not tried. Each export tries the layouts in
# this order on the machine that runs it and keeps the first that agrees with fp32.
INT8_FORMATS = {"u8s8": ("QUInt8", "QInt8", False), "s8s8": ("QInt8", "QInt8", False),
                "u8s8-reduced": ("QUInt8", "QInt8", True), "u8u8": ("QUInt8", "QUInt8", False)}
INT8_TRIED = ("u8s8", "s8s8", "u8s8-reduced")
# how close the INT8 model must stay to fp32 on the check images to be written
INT8_MAX_PROB_DIFF, INT8_MIN_AGREEMENT = 0.1, 0.95


def export_int8(model_dir: str | Path, calibration: Sequence[ImageSource], check: Sequence[ImageSource],
                formats: Sequence[str] = INT8_TRIED, max_diff: float = INT8_MAX_PROB_DIFF,
                min_agreement: float = INT8_MIN_AGREEMENT, name: str = "model.int8.onnx") -> tuple[Path, dict]:
    """Static INT8 quantisation of ``model.onnx`` with ONNX Runtime (QDQ, per-channel weights), its
    activation ranges calibrated on ``calibration`` images (training images, never test), then compared
    with fp32 on the ``check`` images (not the calibration ones). The layouts ``formats`` (of
    :data:`INT8_FORMATS`) are tried in order; the first whose probabilities all stay within ``max_diff``
    of fp32, with at least ``min_agreement`` of the images keeping their most probable class, is written
    and its check recorded in the folder (which is what lets ``Predictor`` pick it on its own). When none
    holds, nothing is written and the error says what was measured.

    Returns:
        the INT8 path and the check's figures.
    """
    model_dir = Path(model_dir)
    fp32 = model_dir / "model.onnx"
    if not fp32.is_file():
        raise MarrowscopeError(f"'{fp32}' is missing; run `marrowscope export-onnx --model {model_dir}` first.")
    if not calibration:
        raise MarrowscopeError("INT8 calibration needs images (training images of the model's manifest).")
    if not check:
        raise MarrowscopeError("the INT8 model is checked against fp32 on real images; none were given.")
    unknown = [f for f in formats if f not in INT8_FORMATS]
    if unknown or not formats:
        raise MarrowscopeError(f"unknown INT8 layout {unknown}; choose from {', '.join(INT8_FORMATS)}.")
    preprocess = Preprocess.for_model(load_model_folder(model_dir)[1])
    x = np.stack([preprocess(decode_image(src))[0] for src in check])
    reference = _onnx_probs(fp32, x)
    tmp, tried = model_dir / (name + ".tmp"), []
    try:
        for fmt in formats:
            _quantize(fp32, tmp, calibration, preprocess, *INT8_FORMATS[fmt])
            probs = _onnx_probs(tmp, x)
            diff = float(np.abs(probs - reference).max())
            agreement = float((probs.argmax(1) == reference.argmax(1)).mean())
            tried.append(f"{fmt}: {diff:.2f} apart, the same top class for {agreement:.0%}")
            if diff <= max_diff and agreement >= min_agreement:
                checked = {"format": fmt, "check_images": len(check), "max_prob_diff": round(diff, 4),
                           "top1_agreement": round(agreement, 4), "calibration_images": len(calibration)}
                out = model_dir / name
                tmp.replace(out)
                write_settings(model_dir, int8=checked)
                return out, checked
    finally:
        tmp.unlink(missing_ok=True)
    raise MarrowscopeError(f"the INT8 model disagrees with fp32 on {len(check)} real images on this machine "
                           f"({'; '.join(tried)}; allowed: {max_diff} apart and the same top class for "
                           f"{min_agreement:.0%}); not written. The fp32 model.onnx is unchanged and is what runs.")


def _quantize(fp32: Path, out: Path, calibration: Sequence[ImageSource], preprocess: Preprocess, activations: str,
              weights: str, reduce_range: bool) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            for src in self.it:
                return {"image": preprocess(decode_image(src))[0][None]}
            return None

    pre = out.with_name(out.name + ".pre")
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=getattr(QuantType, activations), weight_type=getattr(QuantType, weights),
                        reduce_range=reduce_range)
    finally:
        pre.unlink(missing_ok=True)


def _onnx_probs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return probs_from_logits(s.run(None, {s.get_inputs()[0].name: x})[0][None])

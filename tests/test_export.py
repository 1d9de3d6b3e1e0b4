"""ONNX exports check themselves; the INT8 model is built from training images and runs."""

import shutil

import numpy as np
import pytest

from marrowscope.core.artifacts import read_model_info
from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.predict import Predictor
from marrowscope.fit.export import INT8_MAX_PROB_DIFF, INT8_MIN_AGREEMENT, export_int8, export_onnx
from tests.conftest import synthetic_cell


@pytest.fixture(scope="module")
def onnx_model(tiny_model, tmp_path_factory):
    model = shutil.copytree(tiny_model, tmp_path_factory.mktemp("onnx") / "m")
    path, diff = export_onnx(model, [synthetic_cell(k, k) for k in range(7)])
    assert path.is_file() and diff <= 1e-4
    # the exporter's stack traces name this machine's files: the written model holds none
    from pathlib import Path

    assert b"stack_trace" not in path.read_bytes()
    assert str(Path(__file__).resolve().parents[1]).encode() not in path.read_bytes()
    return model


def test_onnx_agrees_with_torch_and_is_the_default(onnx_model):
    images = [synthetic_cell(k, 50 + k) for k in range(7)]
    torch_p, onnx_p = Predictor(onnx_model, backend="torch"), Predictor(onnx_model)
    assert onnx_p.backend == "onnx"
    a = np.stack([list(torch_p.predict(im).values()) for im in images])
    b = np.stack([list(onnx_p.predict(im).values()) for im in images])
    assert np.abs(a - b).max() < 1e-4


CALIBRATION = [synthetic_cell(k % 7, 100 + k) for k in range(28)]
CHECK = [synthetic_cell(k % 7, 300 + k) for k in range(14)]


def test_int8_needs_onnx_and_images(tiny_model, tmp_path):
    model = shutil.copytree(tiny_model, tmp_path / "m")
    with pytest.raises(MarrowscopeError, match="export-onnx"):
        export_int8(model, CALIBRATION, CHECK)


def test_int8_is_written_only_when_it_agrees_with_fp32_and_the_check_is_recorded(onnx_model, tmp_path):
    model = shutil.copytree(onnx_model, tmp_path / "m")
    path, checked = export_int8(model, CALIBRATION, CHECK)
    assert path.stat().st_size < (model / "model.onnx").stat().st_size
    assert read_model_info(model).extra["int8"] == checked and checked["check_images"] == len(CHECK)
    assert checked["max_prob_diff"] <= INT8_MAX_PROB_DIFF and checked["top1_agreement"] >= INT8_MIN_AGREEMENT
    assert Predictor(model).backend == "onnx-int8"  # auto: the fastest file present, and checked
    q, f = Predictor(model, backend="onnx-int8"), Predictor(model, backend="onnx")
    images = [synthetic_cell(k % 7, 200 + k) for k in range(14)]  # neither calibrated nor checked on
    pq = np.stack([q.predict_one(im).probs for im in images])
    pf = np.stack([f.predict_one(im).probs for im in images])
    assert np.abs(pq - pf).max() < 2 * INT8_MAX_PROB_DIFF and (pq.argmax(1) == pf.argmax(1)).mean() >= 0.8
    export_onnx(model, CHECK[:2])  # a new fp32 file: the INT8 one made from the old one goes, and its record
    assert not path.exists() and not read_model_info(model).extra.get("int8")


def test_int8_that_disagrees_is_refused_and_an_unchecked_file_is_never_picked(onnx_model, tmp_path):
    model = shutil.copytree(onnx_model, tmp_path / "m")
    with pytest.raises(MarrowscopeError, match="disagrees with fp32.*not written"):
        export_int8(model, CALIBRATION, CHECK, max_diff=0.0)
    assert not (model / "model.int8.onnx").exists() and not read_model_info(model).extra.get("int8")
    assert Predictor(model).backend == "onnx"
    written, _ = export_int8(shutil.copytree(onnx_model, tmp_path / "other"), CALIBRATION, CHECK)
    shutil.copy(written, model / "model.int8.onnx")  # there, but not checked where this folder was made
    assert Predictor(model).backend == "onnx" and Predictor(model, backend="onnx-int8").backend == "onnx-int8"


def test_the_onnx_file_gives_an_exact_class_activation_map(onnx_model):
    """The head is average pooling and one linear layer, so the map's mean plus the bias is the logit:
    the explanation the app draws from the ONNX file is exact, and needs no torch."""
    from marrowscope.core.cam import CAM_KEY, MAPS_OUTPUT, OnnxCam

    p = Predictor(onnx_model)
    assert read_model_info(onnx_model).extra[CAM_KEY] == "classifier" and OnnxCam.available(p)
    assert MAPS_OUTPUT not in p.outputs  # predictions do not copy the maps out
    cam = OnnxCam(p)
    from safetensors.numpy import load_file

    bias = load_file(str(onnx_model / "model.safetensors"))["classifier.bias"]
    x = p.load(synthetic_cell(3, 9))[0][None]
    logits, maps = p.session.run(["logits", MAPS_OUTPUT], {p.input_name: x})
    per_class = np.tensordot(cam.w, maps[0], axes=1).mean(axis=(1, 2)) + bias
    assert np.allclose(per_class, logits[0], atol=1e-4)
    heat, top = cam.heatmap(x[0], int(logits.argmax()))
    assert heat.shape == maps.shape[2:] and heat.max() == pytest.approx(1.0) and heat.min() >= 0
    # without a class, the top class's map, from the same run
    assert top == int(logits.argmax()) and np.array_equal(cam.heatmap(x[0])[0], heat)
    assert cam.overlay(synthetic_cell(3, 9)).mode == "RGB"


def test_a_light_space_needs_no_torch(onnx_model, tmp_path):
    from marrowscope.fit.export import export_space

    out = export_space(onnx_model, tmp_path / "space")
    wanted = (out / "requirements.txt").read_text().split()
    assert "onnxruntime" in wanted and not {"torch", "torchvision", "timm", "grad-cam>=1.5"} & set(wanted)
    shutil.rmtree(out / "model")
    shutil.copytree(onnx_model, out / "model")
    (out / "model" / "model.onnx").unlink()  # without the ONNX file the Space needs torch for everything
    shutil.rmtree(tmp_path / "space2", ignore_errors=True)
    full = export_space(out / "model", tmp_path / "space2")
    assert "torch" in (full / "requirements.txt").read_text().split()

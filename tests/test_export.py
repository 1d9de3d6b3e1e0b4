"""ONNX exports check themselves; the INT8 model is built from training images and runs."""

import shutil

import numpy as np
import pytest

from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.predict import Predictor
from marrowscope.fit.export import export_int8, export_onnx
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


def test_int8_needs_onnx_and_images(tiny_model, tmp_path):
    model = shutil.copytree(tiny_model, tmp_path / "m")
    with pytest.raises(MarrowscopeError, match="export-onnx"):
        export_int8(model, [synthetic_cell(0, 0)])


def test_int8_model_runs_and_mostly_agrees(onnx_model):
    calib = [synthetic_cell(k % 7, 100 + k) for k in range(28)]
    path = export_int8(onnx_model, calib)
    assert path.stat().st_size < (onnx_model / "model.onnx").stat().st_size
    q, f = Predictor(onnx_model, backend="onnx-int8"), Predictor(onnx_model, backend="onnx")
    assert Predictor(onnx_model).backend == "onnx-int8"  # auto: the fastest file present
    images = [synthetic_cell(k % 7, 200 + k) for k in range(14)]
    pq = np.stack([list(dict(sorted(q.predict(im).items())).values()) for im in images])
    pf = np.stack([list(dict(sorted(f.predict(im).items())).values()) for im in images])
    assert np.abs(pq - pf).max() < 0.15 and (pq.argmax(1) == pf.argmax(1)).mean() >= 0.8

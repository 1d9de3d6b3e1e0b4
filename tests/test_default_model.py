"""The bundled default model: its labels, its ONNX twin, and real cells it must get right."""

import pytest

from marrowscope.core.artifacts import DEFAULT_MODEL, read_model_info
from marrowscope.core.classes import CLASSES
from marrowscope.core.manifest import read_manifest
from marrowscope.core.predict import Predictor


def test_config_lists_the_seven_classes_in_order():
    info = read_model_info(DEFAULT_MODEL)
    assert info.classes == list(CLASSES)
    assert info.architecture == "tf_efficientnet_lite0"
    files = [p for p in DEFAULT_MODEL.rglob("*") if p.is_file()]
    detector = DEFAULT_MODEL / "detector"
    assert sum(p.stat().st_size for p in files if detector not in p.parents) < 40 * 2**20
    # the white-cell detector: fp32 ONNX (the CPU path) and fp16 weights (PyTorch), about 25 MB
    assert sum(p.stat().st_size for p in files if detector in p.parents) < 30 * 2**20


@pytest.mark.slow
def test_classifies_real_test_images(real_data):
    """Five test-split images per class (never seen in training or model choice), both backends."""
    samples = [s for s in read_manifest(DEFAULT_MODEL / "manifest.csv", data_root=real_data) if s.split == "test"]
    picked = [s for c in CLASSES for s in [x for x in samples if x.label == c][:5]]
    for backend in ("onnx", "torch"):
        p = Predictor(backend=backend)
        preds = [next(iter(p.predict(s.path))) for s in picked]
        correct = sum(pred == s.label for pred, s in zip(preds, picked))
        assert correct / len(picked) >= 0.75, (backend, correct)
    eos = [s for s in picked if s.label == "EOS"]
    assert all(next(iter(Predictor().predict(s.path))) == "EOS" for s in eos)  # the easiest class: all right


def test_committed_files_hold_no_build_machine_paths():
    import re

    root = DEFAULT_MODEL.parents[1]
    files = [*DEFAULT_MODEL.glob("*.json"), *DEFAULT_MODEL.glob("*.csv"), *DEFAULT_MODEL.glob("detector/*.json"),
             *(DEFAULT_MODEL / "test_report").glob("*.*"), *(root / "docs" / "results").glob("*.json")]
    absolute = re.compile(r"(?<![\w.])/(work|root|home|tmp|Users)/")
    for f in files:
        if f.suffix in (".json", ".csv"):
            assert not absolute.search(f.read_text()), f
    for f in [*DEFAULT_MODEL.glob("*.onnx"), *DEFAULT_MODEL.glob("detector/*.onnx")]:
        # the exporter's per-node stack traces name the exporting machine
        assert b"pkg.torch.onnx.stack_trace" not in f.read_bytes() and not absolute.search(f.read_bytes().decode(
            "latin-1")), f
    first = (DEFAULT_MODEL / "manifest.csv").read_text().splitlines()[0]
    assert first == "path,label,split,sha256"

"""Predictor, batch streaming with bad files, differential counts, evaluation metrics."""

import pytest

from marrowscope.core.batch import differential_count, run_batch
from marrowscope.core.classes import CLASSES
from marrowscope.core.errors import ImageDecodeError, MarrowscopeError
from marrowscope.core.predict import Predictor
from tests.conftest import synthetic_cell


def test_predict_one_image_descending_probabilities(predictor):
    probs = predictor.predict(synthetic_cell(0, 1))
    values = list(probs.values())
    assert list(probs) != [] and set(probs) == set(CLASSES)
    assert values == sorted(values, reverse=True)
    assert sum(values) == pytest.approx(1.0, abs=1e-5)


def test_same_image_same_answer_from_path_bytes_and_pil(predictor, tmp_path):
    im = synthetic_cell(2, 5)
    im.save(tmp_path / "a.png")
    a = predictor.predict(tmp_path / "a.png")
    b = predictor.predict((tmp_path / "a.png").read_bytes())
    c = predictor.predict(im)
    assert a == pytest.approx(b) and a == pytest.approx(c)


def test_bad_image_raises_decode_error(predictor):
    with pytest.raises(ImageDecodeError):
        predictor.predict(b"not an image")


def test_batch_reports_bad_files_and_classifies_the_rest(predictor, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for k in range(5):
        synthetic_cell(k, k).save(folder / "sub" / f"c{k}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xffjunk")
    (folder / "empty.png").write_bytes(b"")
    result = run_batch(predictor, [folder, tmp_path / "missing.png"], tmp_path / "out.csv", batch_size=2)
    errors = {r["file"].split("/")[-1]: r["error"] for r in result.errors}
    assert set(errors) == {"broken.jpg", "empty.png", "missing.png"}
    assert "empty" in errors["empty.png"] and "does not exist" in errors["missing.png"]
    assert sum(c["cells"] for c in result.counts) == 5
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0].startswith("file,status,predicted,probability,top1,p1,top2,p2,top3,p3")
    assert len(lines) == 1 + 8
    assert (tmp_path / "out_counts.csv").is_file()
    assert "could not be read" in result.summary()


def test_differential_count():
    rows = differential_count(["BLA", "BLA", "EOS", "PMO"], CLASSES)
    assert [r["cells"] for r in rows] == [2, 1, 0, 0, 0, 0, 1]
    assert sum(r["percent"] for r in rows) == pytest.approx(100)


def test_unknown_backend_and_missing_onnx(tiny_model):
    with pytest.raises(MarrowscopeError, match="unknown backend"):
        Predictor(tiny_model, backend="tpu")
    with pytest.raises(MarrowscopeError, match="export-onnx"):
        Predictor(tiny_model, backend="onnx")


def test_predict_on_the_onnx_path_imports_no_torch(tmp_path):
    """The default inference path (decode, preprocess, ONNX Runtime, policy, CSV) runs without torch, timm,
    Lightning or Gradio: a lab's script pays only for what it uses."""
    import subprocess
    import sys

    from marrowscope.core.artifacts import DEFAULT_MODEL

    if not (DEFAULT_MODEL / "model.onnx").is_file():
        pytest.skip("the bundled model's ONNX file is not in this installation")
    synthetic_cell(2, 7, size=96).save(tmp_path / "cell.png")
    code = ("import sys\n"
            "from marrowscope.apps.cli import main\n"
            f"assert main(['predict', {str(tmp_path / 'cell.png')!r}, '--out', {str(tmp_path / 'p.csv')!r}, "
            "'--quiet']) == 0\n"
            "print(sorted(m for m in ('torch', 'timm', 'torchvision', 'lightning', 'gradio') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "p.csv").read_text().count("\n") == 2

"""Predictor, batch streaming with bad files, differential counts, evaluation metrics."""

import numpy as np
import pytest

from marrowscope.classes import CLASSES
from marrowscope.errors import ImageDecodeError, MarrowscopeError
from marrowscope.evaluate import calibration_bins, compute_metrics, evaluate
from marrowscope.predict import Predictor, differential_count
from marrowscope.report import run_batch
from tests.conftest import make_dataset, synthetic_cell


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor(tiny_model, backend="torch")


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


def test_metrics_on_known_predictions():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 1, 1])
    m = compute_metrics(probs, y, ["A", "B"])
    assert m["accuracy"] == 0.75
    assert m["per_class"]["B"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["A"]["precision"] == pytest.approx(0.5)
    assert m["confusion_matrix"] == [[1, 0], [1, 2]]
    ece, bins = calibration_bins(probs, y, n_bins=10)
    # bins: 0.9 (right), 0.8 (right), 0.6 (wrong), 0.7 (right) -> |1-.9|+|1-.8|+|0-.6|+|1-.7| over 4
    assert ece == pytest.approx((0.1 + 0.2 + 0.6 + 0.3) / 4)
    assert sum(b["count"] for b in bins) == 4


def test_evaluate_names_split_and_refuses_unknown_classes(predictor, tmp_path, tiny_run):
    m = evaluate(predictor, tiny_run / "manifest.csv", "test", tmp_path / "ev")
    assert m["split"] == "test" and m["images"] > 0 and m["overlap_with_training"] == 0
    assert "'test' split" in m["description"]
    for name in ("metrics.json", "confusion_matrix.png", "reliability.png", "predictions.csv"):
        assert (tmp_path / "ev" / name).is_file()
    m_train = evaluate(predictor, tiny_run / "manifest.csv", "train")
    assert m_train["overlap_with_training"] == m_train["images"]  # training images are flagged as such
    other = make_dataset(tmp_path / "other", per_class=3, classes=("BLA", "XYZ"))
    with pytest.raises(MarrowscopeError, match="XYZ"):
        evaluate(predictor, other, "all")


def test_temperature_fit_recovers_a_known_scale():
    from marrowscope.calibrate import fit_temperature
    from marrowscope.predict import probs_from_logits

    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 3, (4000, 5))
    y = np.array([rng.choice(5, p=p) for p in probs_from_logits(true_logits[None])])
    # a network twice as confident as it should be: the fitted temperature undoes it
    assert fit_temperature(2.0 * true_logits[None], y) == pytest.approx(2.0, rel=0.1)


def test_calibrate_writes_temperature_and_refuses_test(tmp_path, tiny_run):
    import shutil

    from marrowscope.calibrate import calibrate

    model = shutil.copytree(tiny_run / "model", tmp_path / "m")
    with pytest.raises(MarrowscopeError, match="not on test"):
        calibrate(Predictor(model), tiny_run / "manifest.csv", "test")
    r = calibrate(Predictor(model), tiny_run / "manifest.csv", "val")
    assert Predictor(model).temperature == pytest.approx(r["temperature"], abs=1e-4)
    assert 0.25 <= r["temperature"] <= 8 and r["split"] == "val" and r["images"] > 0

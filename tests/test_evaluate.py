"""Evaluation: metrics on known predictions, named splits, unreadable files, moved data, the CLI."""

import csv
import json

import numpy as np
import pytest

from marrowscope.apps.cli import main
from marrowscope.core.errors import MarrowscopeError
from marrowscope.report.evaluate import compute_metrics, evaluate, expected_calibration_error, reliability_bins
from tests.conftest import make_dataset


def test_metrics_on_known_predictions():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 1, 1])
    m = compute_metrics(probs, y, ["A", "B"])
    assert m["accuracy"] == 0.75
    assert m["per_class"]["B"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["A"]["precision"] == pytest.approx(0.5)
    assert m["confusion_matrix"] == [[1, 0], [1, 2]]
    ece, bins = expected_calibration_error(probs, y, n_bins=10), reliability_bins(probs, y, n_bins=10)
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



def test_macro_f1_averages_over_the_classes_the_images_hold():
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1]])
    y = np.array([0, 1, 1, 0])  # no image of class C: another lab's set without that class
    m = compute_metrics(probs, y, ["A", "B", "C"])
    assert m["per_class"]["C"]["support"] == 0
    f1_a, f1_b = 1.0, 2 * 1.0 * 0.5 / 1.5  # B: precision 1, recall 0.5
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b) / 2)


def test_non_image_files_in_the_folder_are_listed_not_fatal(predictor, tmp_path):
    data = make_dataset(tmp_path / "d", per_class=3)
    (data / "BLA" / "readme.txt").write_text("notes")
    (data / "EOS" / "Thumbs.db").write_bytes(b"\x00" * 64)
    (data / "LYT" / "broken.png").write_bytes(b"\x89PNG broken")
    m = evaluate(predictor, data, "all", tmp_path / "ev")
    assert m["images"] == 21
    reasons = {u["path"].split("/")[-1]: u["reason"] for u in m["unreadable"]}
    assert "not an image file" in reasons["readme.txt"] and "not an image file" in reasons["Thumbs.db"]
    assert "broken.png" in reasons


def test_report_files_name_images_relative_to_the_data(predictor, tmp_path, tiny_run):
    evaluate(predictor, tiny_run / "manifest.csv", "val", tmp_path / "ev")
    with open(tmp_path / "ev" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["path"].startswith(r["label"] + "/") for r in rows)
    text = (tmp_path / "ev" / "metrics.json").read_text() + (tmp_path / "ev" / "predictions.csv").read_text()
    assert str(tiny_run.parent) not in text


def test_data_root_without_the_images_is_a_sentence(tiny_run, tmp_path, capsys):
    args = ["evaluate", str(tiny_run / "manifest.csv"), "--model", str(tiny_run / "model"), "--out",
            str(tmp_path / "ev"), "--data-root", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("marrowscope evaluate: error:") and "does not hold the images" in err and "\n" not in err


def test_no_readable_image_is_a_sentence(predictor, tmp_path):
    data = make_dataset(tmp_path / "d", per_class=3, classes=("BLA",))
    for f in (data / "BLA").iterdir():
        f.write_bytes(b"not a png")
    with pytest.raises(MarrowscopeError, match="(none of|no images)"):
        evaluate(predictor, data, "all")


def test_cli_model_flag_and_the_deprecated_positional_form(tiny_run, tmp_path, capsys):
    data = str(tiny_run / "manifest.csv")
    assert main(["evaluate", data, "--model", str(tiny_run / "model"), "--split", "val", "--out",
                 str(tmp_path / "a")]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main(["evaluate", str(tiny_run / "model"), data, "--split", "val", "--out", str(tmp_path / "b")]) == 0
    assert "deprecated; use --model" in capsys.readouterr().err
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["images"] == b["images"]

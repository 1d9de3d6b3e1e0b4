"""Focus matching: inputs far crisper than the training images are softened to their usual sharpness,
in the one preprocessing path; everything else passes unchanged."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from marrowscope.core.artifacts import read_model_info
from marrowscope.core.focus import MatchFocus, measure, sharpness
from marrowscope.core.preprocess import Preprocess
from marrowscope.fit.augment import unsharp
from marrowscope.fit.checks import fit_focus
from tests.conftest import BAD, make_corpus, synthetic_cell

CFG = {"input_size": (3, 64, 64), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3,
       "crop_pct": 1.0, "crop_mode": "center"}


def soft(seed=0) -> Image.Image:
    return synthetic_cell(seed % 7, seed, size=64).filter(ImageFilter.GaussianBlur(1.5))


def crisp(seed=0) -> Image.Image:
    return unsharp(synthetic_cell(seed % 7, seed, size=64), 1.0, 2.0)


def test_sharpness_ignores_contrast_and_falls_with_blur():
    im = synthetic_cell(2, 3, size=64)
    assert sharpness(ImageEnhance.Contrast(im).enhance(0.6)) == pytest.approx(sharpness(im), rel=0.1)
    assert sharpness(im.filter(ImageFilter.GaussianBlur(1))) < 0.5 * sharpness(im) < sharpness(unsharp(im, 1, 2))
    assert sharpness(Image.new("RGB", (32, 32), (200, 180, 190))) == 0.0


def test_measure_takes_median_and_95th_percentile():
    views = [soft(i) for i in range(20)]
    values = [sharpness(v) for v in views]
    got = measure(views)
    assert got["median"] == pytest.approx(np.median(values), abs=1e-5)
    assert got["above"] == pytest.approx(np.percentile(values, 95), abs=1e-5)
    assert "20 training images" in got["how"]
    assert measure([]) is None


def test_images_within_the_training_range_pass_untouched_and_crisp_ones_are_softened():
    settings = measure([soft(i) for i in range(20)])
    match = MatchFocus.from_settings(settings)
    inside = soft(3)
    out, sigma = match(inside)
    assert out is inside and sigma == 0.0
    sharp = crisp(4)
    assert sharpness(sharp) > settings["above"]
    out, sigma = match(sharp)
    assert sigma > 0 and 0.7 * settings["median"] <= sharpness(out) <= 1.3 * settings["median"]
    assert sharpness(out) < settings["above"] < sharpness(sharp)
    assert MatchFocus.from_settings(None) is None and MatchFocus.from_settings({"how": "x"}) is None
    flat = measure([Image.new("RGB", (64, 64), (200, 180, 190))] * 3)  # nothing to match: no division by 0
    assert flat["median"] == 0 and MatchFocus.from_settings(flat) is None


def test_preprocess_applies_it_between_resize_and_tensor_and_changes_nothing_without_it():
    settings = measure([soft(i) for i in range(20)])
    plain, focused = Preprocess(CFG), Preprocess(CFG, focus=settings)
    inside = soft(5)
    assert np.array_equal(plain(inside)[0], focused(inside)[0])
    big = crisp(6).resize((128, 128), Image.BICUBIC)  # crisp at the network's input size too
    seen = focused.geometry(big)
    assert seen.size == (64, 64) and sharpness(seen) <= 1.3 * settings["median"]
    assert np.array_equal(focused(big)[0], focused.to_array(seen))
    assert not np.array_equal(plain(big)[0], focused(big)[0])


def test_train_measures_it_and_fit_skips_bad_files(tiny_model, tmp_path):
    assert {"median", "above", "how"} <= set(read_model_info(tiny_model).focus)
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    cls, odd = make_corpus(tmp_path / "corpus")
    paths = sorted(cls.iterdir())
    got = fit_focus(model, paths)  # bad files are skipped, the readable ones measured
    assert f"{len(odd)} training images" in got["how"]
    assert json.loads((model / "config.json").read_text())["marrowscope"]["focus"] == got
    assert fit_focus(model, [cls / name for name in BAD]) is None  # nothing readable: nothing written
    assert read_model_info(model).focus == got


def test_fit_checks_command_fits_a_folder_made_without_them(tiny_model, tmp_path, capsys):
    from marrowscope.apps.cli import main
    from marrowscope.core.artifacts import write_settings

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    write_settings(model, focus=None, domain=None)  # as trained with --no-checks
    (model / "domain.safetensors").unlink()
    assert read_model_info(model).focus is None
    assert main(["fit-checks", "--model", str(model), "--only", "focus", "domain",
                 "--data", str(tiny_model / "manifest.csv")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("focus: {") and "\ndomain: {" in out and "scale" not in out
    assert {"median", "above"} <= set(read_model_info(model).focus)
    assert (model / "domain.safetensors").is_file() and read_model_info(model).extra["domain"]["threshold"] > 0


def test_csvs_and_app_say_how_much_each_image_was_blurred(tiny_model, tmp_path):
    """predict's and evaluate's focus_blur_px: the blur given (0 when left alone), empty without settings;
    the app says it in a sentence."""
    import csv

    from marrowscope.apps.app import classify
    from marrowscope.apps.cli import main
    from marrowscope.core.artifacts import write_settings
    from marrowscope.core.predict import Predictor

    model = shutil.copytree(tiny_model, tmp_path / "model")
    size = read_model_info(model).data_config["input_size"][-1]
    seen = [Preprocess.for_model(read_model_info(tiny_model)).to_input_size(soft(i).resize((size, size)))[0]
            for i in range(20)]
    write_settings(model, focus=measure(seen))  # the soft cells are this folder's training sharpness
    cells = tmp_path / "cells" / "EOS"
    cells.mkdir(parents=True)
    soft(1).resize((size, size)).save(cells / "soft.png")
    crisp(2).resize((size, size)).save(cells / "crisp.png")
    without = shutil.copytree(tiny_model, tmp_path / "without")
    write_settings(without, focus=None)
    for folder in (model, without):
        out = tmp_path / f"{folder.name}.csv"
        assert main(["predict", str(cells), "--model", str(folder), "--out", str(out)]) == 0
        rows = {Path(r["file"]).name: r["focus_blur_px"] for r in csv.DictReader(open(out))}
        if folder == model:
            assert rows["soft.png"] == "0.00" and float(rows["crisp.png"]) > 0
        else:  # no focus settings: nothing to say
            assert rows == {"soft.png": "", "crisp.png": ""}
    assert main(["evaluate", "--model", str(model), str(tmp_path / "cells"), "--split", "all",
                 "--out", str(tmp_path / "ev")]) == 0
    rows = {Path(r["path"]).name: r["focus_blur_px"] for r in csv.DictReader(open(tmp_path / "ev" / "predictions.csv"))}
    assert rows["soft.png"] == "0.00" and float(rows["crisp.png"]) > 0
    advice = classify(Predictor(model), None, str(cells / "crisp.png"))[2]
    assert "blurred by" in advice and "blurred by" not in classify(Predictor(model), None, str(cells / "soft.png"))[2]

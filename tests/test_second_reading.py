"""The second reading: images the domain check flags are also read with the cell drawn smaller (the model
folder's ``second_reading.zoom``) and the two readings averaged; images like the training images are not."""

import re
import shutil

import numpy as np
import pytest
from PIL import Image

from marrowscope.apps.cli import main
from marrowscope.core.artifacts import read_model_info, write_settings
from marrowscope.core.predict import Predictor, probs_from_logits
from marrowscope.core.scale import ToTrainingScale
from marrowscope.fit.checks import fit_domain
from tests.conftest import strange_image, synthetic_cell

ZOOM = 0.6


@pytest.fixture(scope="module")
def zoomed_model(tiny_run, tmp_path_factory):
    """The tiny model with a training scale (its synthetic cells show no red cells to measure one), a domain
    check fitted at that scale, and a second reading at ZOOM."""
    model = shutil.copytree(tiny_run / "model", tmp_path_factory.mktemp("zoom") / "model")
    write_settings(model, scale={"pixel_size_um": 0.1, "field_px": 48, "how": "set by the test"})
    fit_domain(model, tiny_run / "manifest.csv")
    write_settings(model, second_reading={"zoom": ZOOM, "how": "set by the test"})
    return model


def _cells():
    return [synthetic_cell(k % 7, 900 + k) for k in range(5)], [strange_image(k) for k in range(3)]


def test_zoom_draws_the_cell_smaller_in_a_field_as_wide():
    a = np.full((400, 400, 3), 230, np.uint8)
    a[150:250, 150:250] = (120, 40, 160)  # 100 px at the training scale; wide enough that nothing is mirrored
    for zoom, side in ((1.0, 100), (0.5, 50)):
        out, scale = ToTrainingScale(0.1, 200, given_um=0.1, zoom=zoom)(Image.fromarray(a))
        assert out.size == (200, 200) and scale.pixel_size_um == 0.1  # the scale says the image's, not the zoom's
        assert abs((np.asarray(out)[..., 1] < 100).sum(axis=1).max() - side) <= 2


def test_flagged_images_average_two_readings_and_the_rest_keep_one(zoomed_model):
    assert read_model_info(zoomed_model).second_zoom == ZOOM
    p = Predictor(zoomed_model, backend="torch")
    like, odd = _cells()
    raws = list(p.stream_logits(like + odd))
    flagged = [p.finish(r).unusual for r in raws]
    assert all(flagged[len(like):]), "the odd images must be flagged for this test to mean anything"
    for r, f, src in zip(raws, flagged, like + odd):
        if not f:
            assert r.again is None
            continue
        # by hand: the same image loaded with the cell at ZOOM of its size, through the same network
        x = p.load(src, None, r.scale.pixel_size_um, ZOOM)[0]
        again = p.forward(x[None])[0][:, 0]
        assert np.allclose(r.again, again, atol=1e-5)
        both = (probs_from_logits(r.logits[:, None], p.temperature) + probs_from_logits(again[:, None], p.temperature))
        assert np.allclose(p.finish(r).probs, both[0] / 2, atol=1e-6)
        assert not np.allclose(p.finish(r).probs, probs_from_logits(r.logits[:, None], p.temperature)[0], atol=1e-4)
    # one image at a time (the app) gives what a batch gives
    for src, r in zip(like + odd, raws):
        assert np.allclose(p.predict_one(src).probs, p.finish(r).probs, atol=1e-5)


def test_a_folder_without_the_setting_reads_once(zoomed_model, tmp_path):
    plain = shutil.copytree(zoomed_model, tmp_path / "plain")
    write_settings(plain, second_reading=None)
    p, z = Predictor(plain, backend="torch"), Predictor(zoomed_model, backend="torch")
    assert p.second_zoom is None
    like, odd = _cells()
    for src in like + odd:
        a, b = p.predict_one(src), z.predict_one(src)
        assert a.domain_score == pytest.approx(b.domain_score)  # the check reads the first reading only
        assert np.allclose(a.probs, b.probs, atol=1e-6) != b.unusual


def test_the_lightning_path_reads_flagged_images_again_too(zoomed_model, tmp_path):
    from marrowscope.core.distributed import predict_distributed

    like, odd = _cells()
    files = []
    for k, im in enumerate(like + odd):
        files.append(tmp_path / f"c{k}.png")
        im.save(files[-1])
    p = Predictor(zoomed_model, backend="torch")
    single = list(p.predict_many(files))
    ranked = predict_distributed(p, files, devices=1, accelerator="cpu", workers=0)
    for a, b in zip(ranked, single):
        assert np.allclose(a.probs, b.probs, atol=1e-5)
    assert sum(b.unusual for b in single) >= len(odd)


def test_the_app_says_when_an_image_was_read_twice(zoomed_model, tmp_path):
    from marrowscope.apps.app import classify

    p = Predictor(zoomed_model, backend="torch")
    like, odd = _cells()
    for name, im in (("odd.png", odd[0]), *((f"like{k}.png", c) for k, c in enumerate(like))):
        im.save(tmp_path / name)
        said = "Read twice" in classify(p, None, str(tmp_path / name))[2]
        assert said == p.predict_one(tmp_path / name).unusual, name
    assert "Read twice" in classify(p, None, str(tmp_path / "odd.png"))[2]


def test_the_zoom_is_chosen_on_the_adaptation_split_and_written(zoomed_model, tiny_run, tmp_path, capsys):
    model = shutil.copytree(zoomed_model, tmp_path / "model")
    write_settings(model, second_reading=None)
    other = tmp_path / "other"
    for c, k in (("EOS", 1), ("LYT", 2)):  # another lab: the cells drawn larger, on a bluer ground
        (other / c).mkdir(parents=True)
        for i in range(24):
            im = synthetic_cell(k, 5000 + 31 * i + k, size=96).resize((72, 72))
            Image.fromarray(np.clip(np.asarray(im, np.int16) + (-20, 0, 25), 0, 255).astype(np.uint8)).save(
                other / c / f"{c}_{i:03d}.png")
    assert main(["choose-second-zoom", str(other), "--model", str(model), "--zooms", "0.8", "0.6",
                 "--data-root", str(tiny_run.parent / "cells"), "--write"]) == 0
    out = capsys.readouterr().out
    acc = {float(z): float(a) for z, a in re.findall(r"zoom ([\d.]+): choice ([\d.]+)", out)}
    assert set(acc) == {1.0, 0.8, 0.6} and "own test, every image read so" in out
    chosen = read_model_info(model).second_zoom or 1.0
    assert acc[chosen] == max(acc.values())  # the best on the 20 per class that choose, not on the rest
    assert f"chosen: {chosen}" in out


def test_choosing_needs_a_domain_check_and_a_scale(tiny_model, tmp_path, capsys):
    model = shutil.copytree(tiny_model, tmp_path / "model")
    write_settings(model, scale=None)
    assert main(["choose-second-zoom", str(tmp_path), "--model", str(model)]) == 2
    assert "fit-checks" in capsys.readouterr().err

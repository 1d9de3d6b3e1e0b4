"""The domain check: a score of how unlike the training images an input is, stored in the model
folder and reported by every entry point."""

import csv
import shutil

import numpy as np
import pytest

from marrowscope.apps.cli import main
from marrowscope.core import domain
from marrowscope.core.predict import Predictor
from marrowscope.fit.checks import fit_domain
from tests.conftest import strange_image, synthetic_cell


def test_scores_are_about_one_inside_and_large_outside():
    rng = np.random.default_rng(0)
    cov = np.diag(np.linspace(0.5, 2.0, 16))
    train, val = rng.multivariate_normal(np.zeros(16), cov, 800), rng.multivariate_normal(np.zeros(16), cov, 400)
    check = domain.fit(train, val)
    inside = check.score(rng.multivariate_normal(np.zeros(16), cov, 400))
    outside = check.score(rng.multivariate_normal(np.full(16, 3.0), cov, 400))
    assert 0.8 < np.median(inside) < 1.2 and np.median(outside) > 2.5
    assert check.unusual(inside).mean() < 0.05 and check.unusual(outside).mean() > 0.95


@pytest.fixture(scope="module")
def checked_model(tiny_run, tmp_path_factory):
    model = shutil.copytree(tiny_run / "model", tmp_path_factory.mktemp("dom") / "model")
    info = fit_domain(model, tiny_run / "manifest.csv")
    assert (model / domain.DOMAIN_FILE).is_file() and info["threshold"] > 0
    return model


def test_unlike_images_score_higher_and_are_flagged(checked_model, tmp_path):
    p = Predictor(checked_model, backend="torch")
    like = [p.predict_one(synthetic_cell(k % 7, 500 + k)) for k in range(14)]
    unlike = [p.predict_one(strange_image(k)) for k in range(6)]
    assert min(u.domain_score for u in unlike) > max(x.domain_score for x in like)
    # the tiny model's threshold comes from 14 validation images: strict on new cells, but far below the odd ones
    assert all(u.unusual for u in unlike) and sum(x.unusual for x in like) < len(like) / 2


def test_predict_writes_the_columns_and_warns_on_stderr(checked_model, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(4):
        synthetic_cell(k, 700 + k).save(folder / f"cell{k}.png")
        strange_image(k).save(folder / f"odd{k}.png")
    out = tmp_path / "p.csv"
    assert main(["predict", str(folder), "--model", str(checked_model), "--backend", "torch", "--out", str(out),
                 "--quiet"]) == 0
    said = capsys.readouterr()
    assert "look unlike the images the model learnt from" in said.err  # once, on stderr
    assert (said.out + said.err).count("look unlike the images") == 1
    with open(out, newline="") as fh:
        rows = {r["file"].split("/")[-1]: r for r in csv.DictReader(fh)}
    assert all(rows[f"odd{k}.png"]["unusual"] == "yes" for k in range(4))
    assert all(float(r["domain_score"]) > 0 for r in rows.values())


def test_training_fits_the_check_and_a_folder_without_it_has_none(tiny_model, tmp_path):
    from marrowscope.core.artifacts import read_model_info

    assert (tiny_model / domain.DOMAIN_FILE).is_file()  # `train` fits it on its own training images
    assert "training images" in read_model_info(tiny_model).extra["domain"]["fitted_on"]
    bare = shutil.copytree(tiny_model, tmp_path / "bare")
    (bare / domain.DOMAIN_FILE).unlink()
    p = Predictor(bare, backend="torch")
    assert p.unusual_above is None and p.predict_one(synthetic_cell(0, 1)).domain_score is None

"""Fitting a lab without labels (`adapt --unlabelled`): a new folder whose cells are never accepted, its
normalisation statistics fitted on the lab, the card saying so; bad input refused; the source untouched."""

import hashlib

import numpy as np
import pytest

from marrowscope.apps.cli import main
from marrowscope.core.artifacts import read_model_info
from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.predict import Predictor
from marrowscope.fit.label_free import MIN_CELLS, adapt_unlabelled
from tests.conftest import make_cell_folder, synthetic_cell


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_fewer_than_100_readable_cells_is_a_sentence_and_nothing_is_written(tiny_model, tmp_path):
    folder = make_cell_folder(tmp_path / "lab", MIN_CELLS - 1)  # and one file that is not an image
    with pytest.raises(MarrowscopeError, match=f"99 readable cell image.*at least {MIN_CELLS}"):
        adapt_unlabelled(folder, tiny_model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(MarrowscopeError, match="not a folder"):
        adapt_unlabelled(folder / "cell000.png", tiny_model, tmp_path / "out")


def test_a_lab_fitted_without_labels_never_accepts_a_cell(tiny_model, tmp_path, capsys):
    before = _digest(tiny_model)
    folder = make_cell_folder(tmp_path / "lab", 120)
    argv = ["adapt", str(folder), "--unlabelled", "--model", str(tiny_model), "--out", str(tmp_path / "ours")]
    assert main(argv) == 0
    said = capsys.readouterr()
    assert "fitted without labels on 120 images of lab" in said.out and "never accepted" in said.out
    assert "broken.png" in said.err
    out = tmp_path / "ours"
    info = read_model_info(out)
    assert info.label_free["images"] == 120 and info.label_free["stain"] == "not mapped"
    assert "## Adapted without labels from 120 images of lab" in (out / "MODEL_CARD.md").read_text()
    # the statistics moved towards the lab's, the weights did not
    from safetensors.numpy import load_file

    a, b = load_file(str(tiny_model / "model.safetensors")), load_file(str(out / "model.safetensors"))
    means = [k for k in a if k.endswith("running_mean")]
    assert any(not np.allclose(a[k], b[k], atol=1e-3) for k in means)
    weights = [k for k in a if k.endswith("weight") and "bn" not in k]
    assert all(np.allclose(a[k], b[k], atol=1e-2) for k in weights)
    # a very sure cell of the source is accepted there, never here
    source, fitted = Predictor(tiny_model, review_below=0.0), Predictor(out, review_below=0.0)
    cells = [synthetic_cell(k, 500 + k) for k in range(7)]
    assert any(p.decision == "accepted" for p in source.predict_many(cells))
    assert not any(p.decision == "accepted" for p in fitted.predict_many(cells))
    assert "nothing is accepted" in fitted.policy.describe()
    assert _digest(tiny_model) == before  # the source folder is only read


def test_a_folder_of_mostly_one_cell_type_gets_a_warning_with_the_shares(tiny_model, tmp_path, capsys):
    folder = tmp_path / "one"
    folder.mkdir()
    for k in range(MIN_CELLS + 5):
        synthetic_cell(2, k).save(folder / f"c{k:03d}.png")
    r = adapt_unlabelled(folder, tiny_model, tmp_path / "out")
    assert r["warning"].startswith("the model sees") and "biases the fitted statistics" in r["warning"]
    # the command line says it on stderr
    argv = ["adapt", str(folder), "--unlabelled", "--model", str(tiny_model), "--out", str(tmp_path / "cli")]
    assert main(argv) == 0
    assert "warning: the model sees" in capsys.readouterr().err

"""One corpus of bad and odd files, made here, through every entry point that reads images:
the decoder, the dataset scan (prepare), batch prediction (predict) and the app's batch view.
Bad files get a specific reason; odd but valid ones are classified; the rest always go on."""

from pathlib import Path

import pytest

from marrowscope.apps.app import batch as app_batch
from marrowscope.core.batch import run_batch
from marrowscope.core.data import prepare
from marrowscope.core.errors import ImageDecodeError
from marrowscope.core.images import decode_image
from marrowscope.core.predict import Predictor
from tests.conftest import BAD, make_corpus


def test_decoder_on_the_corpus(tmp_path):
    cls, odd = make_corpus(tmp_path / "d")
    for name, (_, words) in BAD.items():
        with pytest.raises(ImageDecodeError, match=words):
            decode_image(cls / name)
    for name in odd:
        assert decode_image(cls / name).mode == "RGB"
    assert decode_image(cls / "exif.jpg").size == (20, 40)  # EXIF rotation applied


def test_dataset_scan_reports_each_bad_file(tmp_path):
    cls, odd = make_corpus(tmp_path / "d")
    samples, skipped = prepare(tmp_path / "d", ("BLA",), val=0, test=0)
    reasons = {Path(s.source).name: s.reason for s in skipped}
    assert set(reasons) == set(BAD)
    for name, (_, words) in BAD.items():
        assert words in reasons[name]
    assert {s.path.name for s in samples} == odd


@pytest.fixture(scope="module", params=["tiny", "bundled"])
def predictor(request, tiny_model):
    """The tiny model, and the bundled one: its scale, focus, domain check and second reading of unusual
    images (odd files are unusual) all meet the corpus."""
    if request.param == "tiny":
        return Predictor(tiny_model, backend="torch")
    p = Predictor()  # the bundled model, as the CLI and the app load it
    assert p.second_zoom and p.unusual_above is not None
    return p


def test_predict_and_app_batch_on_the_corpus(tmp_path, predictor):
    cls, odd = make_corpus(tmp_path / "d")
    result = run_batch(predictor, [cls, tmp_path / "does-not-exist.png", tmp_path / "empty-folder"])
    (tmp_path / "empty-folder").mkdir()
    errors = {r["file"].split("/")[-1]: r["error"] for r in result.errors}
    assert {n for n in errors if n in BAD} == set(BAD)
    for name, (_, words) in BAD.items():
        assert words in errors[name]
    assert "does not exist" in errors["does-not-exist.png"]
    assert sum(c["cells"] for c in result.counts) == len(odd)  # every odd-but-valid file was classified
    if predictor.second_zoom:  # the bundled model finds the odd files unusual and reads them twice
        assert len(result.unusual) == len(odd)
    empty = run_batch(predictor, [tmp_path / "empty-folder"])
    assert "holds no images" in empty.errors[0]["error"]

    rows, counts, _, _, downloads, note, _, _ = app_batch(predictor, [str(p) for p in sorted(cls.iterdir())])
    assert sum(c[1] for c in counts) == len(odd)
    for name, (_, words) in BAD.items():
        assert f"- {name}: '{name}'" in note and words in note
    assert str(tmp_path) not in note  # the user's file names, not server paths
    assert "'=HYPERLINK(1).png" in Path(downloads[0]).read_text()  # the app's CSV names files as uploaded


def test_no_csv_cell_starts_a_formula(tmp_path, predictor, monkeypatch):
    """A file named '=HYPERLINK(1).png' given as a relative path, as a user in that folder would."""
    import csv

    cls, _ = make_corpus(tmp_path / "d")
    monkeypatch.chdir(cls)
    run_batch(predictor, sorted(p.name for p in cls.iterdir()), "p.csv")
    with open("p.csv", newline="") as fh:
        cells = [c for row in csv.reader(fh) for c in row]
    assert "'=HYPERLINK(1).png" in cells
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells)

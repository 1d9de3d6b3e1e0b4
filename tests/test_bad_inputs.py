"""One corpus of bad and odd files, made here, through every entry point that reads images:
the decoder, the dataset scan (prepare), batch prediction (predict) and the app's batch view.
Bad files get a specific reason; odd but valid ones are classified; the rest always go on."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from marrowscope.apps.app import batch as app_batch
from marrowscope.core.batch import run_batch
from marrowscope.core.data import prepare
from marrowscope.core.errors import ImageDecodeError
from marrowscope.core.images import decode_image
from marrowscope.core.predict import Predictor
from tests.conftest import synthetic_cell

BAD = {  # file name -> (bytes, words the reason must contain)
    "zero.jpg": (b"", "empty"),
    "text.jpg": (b"just some text, not pixels", "not an image format"),
    "doc.jpg": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj", "not an image format"),
    "bomb.png": (None, "above the limit"),
    "truncated.jpg": (None, "truncated or corrupt"),
    "thin.png": (None, "side ratio"),  # 100000 x 1: once 20 GB after the resize
    "=HYPERLINK(1).png": (b"formula", "not an image format"),  # a name a spreadsheet would run
}


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def make_corpus(folder):
    """Bad files and odd-but-valid files, in one class folder 'BLA'."""
    cls = folder / "BLA"
    cls.mkdir(parents=True)
    cell = synthetic_cell(0, 1, size=40)
    full = _bytes(Image.effect_noise((64, 64), 60).convert("RGB"), "JPEG")
    data = {**{k: v for k, (v, _) in BAD.items()},
            "bomb.png": _bytes(Image.new("1", (20000, 20000)), "PNG"),
            "truncated.jpg": full[: len(full) // 2],
            "thin.png": _bytes(Image.new("L", (100000, 1)), "PNG")}
    exif = Image.Exif()
    exif[0x0112] = 6
    odd = {
        "rgba.png": _bytes(cell.convert("RGBA"), "PNG"),
        "onebit.png": _bytes(cell.convert("1"), "PNG"),
        "gray.png": _bytes(cell.convert("L"), "PNG"),
        "sixteen.png": _bytes(Image.fromarray((np.asarray(cell.convert("L")).astype(np.uint16) * 257)), "PNG"),
        "sixteen.tif": _bytes(Image.fromarray((np.asarray(cell.convert("L")).astype(np.uint16) * 257)), "TIFF"),
        "cmyk.jpg": _bytes(cell.convert("CMYK"), "JPEG"),
        "exif.jpg": _bytes(cell.resize((40, 20)), "JPEG", exif=exif),
        "anim.gif": _bytes(cell, "GIF", save_all=True, append_images=[synthetic_cell(1, 2, size=40)]),
        "tiny.png": _bytes(Image.new("RGB", (1, 1), (200, 100, 50)), "PNG"),
        "plain.jpg": _bytes(cell, "JPEG"),
    }
    for name, content in {**data, **odd}.items():
        (cls / name).write_bytes(content)
    return cls, set(odd)


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

"""Counting whole fields: tiles, the counting rules, the differential's intervals and advisories, the
files `count` writes, bad input, and the detector's ONNX file. Fields are drawn here: pink red cells
and white cells with a purple nucleus on a pale background, at a known pixel size."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from marrowscope.apps.cli import main
from marrowscope.core.artifacts import DEFAULT_MODEL
from marrowscope.core.count import Differential, FieldCounter, cell_window, count_fields, gather_fields, wilson
from marrowscope.core.detect import (
    DETECT_UM,
    OVERLAP,
    TILE,
    Box,
    NucleusDetector,
    field_scale,
    find_cells,
    tile_origins,
    tiles,
)
from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.predict import Predictor
from tests.conftest import BAD, make_corpus

UM = 0.1  # µm per pixel of the drawn fields


def draw_field(size: tuple[int, int], cells: list[tuple[float, float]], seed: int = 0, red_cells: int = 12,
               um: float = UM) -> Image.Image:
    """A smear: red cells (7.5 µm pink discs with a pale centre) and white cells (12 µm, a 7 µm purple
    nucleus in lilac cytoplasm) centred at ``cells`` (px)."""
    rng = np.random.default_rng(seed)
    w, h = size
    a = np.empty((h, w, 3), np.float32)
    a[:] = (236, 226, 230)
    yy, xx = np.ogrid[:h, :w]
    for _ in range(red_cells):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), 3.75 / um
        d = (xx - cx) ** 2 + (yy - cy) ** 2
        a[d < r ** 2] = (215, 140, 150)
        a[d < (0.4 * r) ** 2] = (228, 185, 190)
    for cx, cy in cells:
        d = (xx - cx) ** 2 + (yy - cy) ** 2
        a[d < (6 / um) ** 2] = (200, 170, 215)
        a[d < (3.5 / um) ** 2] = (95, 45, 150)
    a += rng.normal(0, 4, a.shape)
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def bundled():
    if not (DEFAULT_MODEL / "model.onnx").is_file():
        pytest.skip("the bundled model's ONNX file is not in this installation")
    return Predictor(DEFAULT_MODEL)


@pytest.mark.parametrize("length", [50, 256, 257, 700, 4321])
def test_tile_cores_partition_the_frame_and_tiles_overlap_by_more_than_a_cell(length):
    origins = tile_origins(length)
    assert origins[0] == 0 and origins[-1] + TILE >= length
    assert all(b - a <= TILE - OVERLAP for a, b in zip(origins, origins[1:]))  # neighbours share >= OVERLAP
    array = np.zeros((length, 30, 3), np.float32)
    cores = sorted((c[1], c[3]) for _, _, _, c in tiles(array))
    assert cores[0][0] == 0 and cores[-1][1] == length
    assert all(a[1] == b[0] for a, b in zip(cores, cores[1:]))  # no gap, no double cover


def test_each_cell_of_a_large_field_is_found_once_across_tiles():
    # at 0.4 µm/px the field is at the detection scale: 1,200 px is 5 x 5 tiles; cells straddle their seams
    um = DETECT_UM
    centres = [(130, 130), (160 + 48, 300), (400, 160 + 48), (600, 600), (960, 1000), (350, 900), (1100, 500)]
    image = draw_field((1200, 1200), centres, um=um, red_cells=60)
    boxes = find_cells(NucleusDetector(), image, field_scale(image, um, 0.1))
    assert len(boxes) == len(centres)
    for cx, cy in centres:
        assert sum(b.covers(cx, cy) for b in boxes) == 1


def test_the_frame_scale_comes_from_red_cells_else_is_said_to_be_assumed():
    image = draw_field((900, 700), [(450, 350)], red_cells=25)
    scale = field_scale(image, None, 0.2)
    assert scale.pixel_size_um == pytest.approx(UM, rel=0.15) and "red cells" in scale.source
    blank = Image.new("RGB", (300, 300), (236, 226, 230))
    assert "assumed" in field_scale(blank, None, 0.2).source
    assert field_scale(blank, 0.25, 0.2).source == "given"


def test_a_window_past_the_edge_is_mirrored_and_keeps_the_cell_centred():
    image = draw_field((400, 300), [(20, 150)])
    w = cell_window(image, Box(0, 90, 80, 210, 1.0), 200)
    a = np.asarray(w)
    assert w.size == (200, 200)
    assert a[100, 100].tolist() == np.asarray(image)[150, 40].tolist() or a[100, 100, 2] > a[100, 100, 1]


def test_edge_cells_are_listed_not_counted_and_a_crop_counts_its_one_cell(bundled):
    counter = FieldCounter(bundled, NucleusDetector(), pixel_size=UM)
    image = draw_field((800, 600), [(400, 300), (30, 300)], red_cells=10)
    path = Path(__import__("tempfile").mkdtemp()) / "f.png"
    image.save(path)
    field = counter.count_one(path, "f")
    assert len(field.cells) == 2 and len(field.counted) == 1
    edge = [c for c in field.cells if not c.counted][0]
    assert "edge" in edge.note and edge.prediction is None
    assert field.counted[0].prediction is not None and field.counted[0].box.covers(400, 300)

    crop = draw_field((100, 100), [(50, 50)], red_cells=0)  # the cell fills the crop and reaches its edges
    crop.save(path)
    field = counter.count_one(path, "crop")
    assert len(field.counted) == 1 and field.note == "read as a single-cell crop"
    same = bundled.predict_one(crop, UM)
    assert field.counted[0].prediction.call == same.call
    assert np.allclose(field.counted[0].prediction.probs, same.probs)


def test_a_field_without_white_cells_says_so(bundled):
    path = Path(__import__("tempfile").mkdtemp()) / "empty.png"
    draw_field((500, 400), [], red_cells=15).save(path)
    field = FieldCounter(bundled, NucleusDetector(), UM).count_one(path, "empty")
    assert field.cells == [] and field.note == "no white cell found" and field.problem is None


def test_intervals_are_wilson_and_percentages_leave_out_unidentifiable_cells():
    calls = ["BLA"] * 20 + ["NGS"] * 70 + ["LYT"] * 10 + ["NIF"] * 5
    d = Differential(["BLA", "LYT", "NGS", "NIF"], calls, ["accepted"] * len(calls), target=200)
    rows = {r["class"]: r for r in d.rows()}
    assert rows["BLA"]["percent"] == 20.0 and rows["NIF"]["percent"] == pytest.approx(100 * 5 / 105, abs=0.05)
    lo, hi = wilson(20, 100)
    assert (rows["BLA"]["low"], rows["BLA"]["high"]) == (round(100 * lo, 1), round(100 * hi, 1))
    assert 12 < rows["BLA"]["low"] < 14 and 28 < rows["BLA"]["high"] < 30  # Wilson's interval for 20/100
    advice = " ".join(d.advisories())
    assert "straddles 20%" in advice and "105 of the target 200" in advice
    assert "straddles 5%" not in advice and "look unlike" not in advice
    odd = Differential(["BLA", "NGS"], ["NGS"] * 10, ["review"] * 10, target=10, unusual=6)
    assert "6 of 10 counted cells look unlike" in " ".join(odd.advisories())
    many = Differential(["BLA", "NGS"], ["BLA"] * 2 + ["NGS"] * 498, ["accepted"] * 500, target=500)
    assert not many.advisories()  # 0.4% blasts of 500: well clear of 5%, target reached, nothing for review


def test_count_writes_its_files_reports_bad_files_and_goes_on(tmp_path, bundled):
    cls, odd = make_corpus(tmp_path / "corpus")
    fields = tmp_path / "fields"
    fields.mkdir()
    draw_field((900, 700), [(300, 350), (620, 300)], seed=1).save(fields / "two.png")
    draw_field((600, 500), [], seed=2).save(fields / "none.png")
    one = tmp_path / "one.png"
    draw_field((700, 600), [(350, 300)], seed=3).save(one)
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as zf:
        zf.write(one, "inner/one.png")
    out = tmp_path / "out"
    argv = ["count", str(fields), str(cls), str(tmp_path / "more.zip"), "--out", str(out), "--detector",
            "classical", "--pixel-size", str(UM), "--model", str(DEFAULT_MODEL)]
    assert main(argv) == 0
    import csv

    rows = list(csv.DictReader(open(out / "cells.csv")))
    by_field = {}
    for r in rows:
        by_field.setdefault(Path(r["field"]).name, []).append(r)
    for name, (_, words) in BAD.items():
        assert by_field[name][0]["status"] == "error" and words in by_field[name][0]["error"]
    assert [r["counted"] for r in by_field["two.png"]] == ["yes", "yes"]
    assert by_field["two.png"][0]["predicted"] and by_field["two.png"][0]["decision"]
    assert by_field["none.png"][0]["note"] == "no white cell found"
    assert by_field["one.png"][0]["counted"] == "yes"  # the zip member
    summary = json.loads((out / "count.json").read_text())
    counted = sum(1 for r in rows if r["counted"] == "yes")
    assert summary["cells_counted"] == counted >= 3  # two + one (+ any odd corpus crop read as a cell)
    assert sum(r["cells"] for r in summary["differential"]) == counted
    assert summary["fields_unreadable"] == len(BAD)
    pngs = {p.name for p in (out / "overlays").glob("*.png")}
    assert {"two.png", "none.png", "one.png"} <= pngs
    assert (out / "count.csv").read_text().startswith("class,cells,percent,low,high,of")


def test_a_field_too_large_to_count_gets_a_sentence(tmp_path, bundled):
    big = tmp_path / "big.png"
    Image.new("L", (8100, 8100), 230).save(big)  # 66 megapixels, a small file
    files, names, problems = gather_fields([big], tmp_path)
    c = count_fields(bundled, NucleusDetector(), files, names, problems)
    assert c.fields[0].problem is not None and "8,000 x 8,000" in c.fields[0].problem.reason
    with pytest.raises(MarrowscopeError, match="at least 1 cell"):
        count_fields(bundled, NucleusDetector(), files, names, problems, target=0)


def test_the_detectors_onnx_file_gives_the_networks_boxes(tmp_path):
    pytest.importorskip("onnxruntime")
    import torch

    from marrowscope.core.detect import Detector
    from marrowscope.core.detector_net import build_detector
    from marrowscope.fit.detection import write_detector_folder

    torch.manual_seed(0)
    net = build_detector("tf_efficientnet_lite0", TILE, pretrained=False)
    net.score_thresh = 0.0  # an untrained network's scores are all low: keep every box to compare
    folder = write_detector_folder(net, tmp_path / "detector", {"architecture": "tf_efficientnet_lite0",
                                                                  "tile": TILE, "threshold": 0.0})
    tile = np.random.default_rng(0).random((TILE, TILE, 3), dtype=np.float32)
    b1, s1 = Detector(folder, backend="onnx").tile_boxes(tile)
    b2, s2 = Detector(folder, backend="torch").tile_boxes(tile)
    assert len(b1) == len(b2) > 0
    assert np.allclose(b1, b2, atol=1e-2) and np.allclose(s1, s2, atol=1e-4)


def test_count_through_onnx_imports_no_torch(tmp_path):
    if not (DEFAULT_MODEL / "detector" / "model.onnx").is_file():
        pytest.skip("the bundled model has no detector in this installation")
    draw_field((700, 600), [(350, 300)]).save(tmp_path / "f.png")
    code = ("import sys\nfrom marrowscope.apps.cli import main\n"
            f"assert main(['count', {str(tmp_path / 'f.png')!r}, '--out', {str(tmp_path / 'o')!r}]) == 0\n"
            "print(sorted(m for m in ('torch', 'timm', 'torchvision', 'lightning', 'gradio') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_field_view_counts_and_shows_a_selected_cell(tmp_path, bundled):
    import gradio as gr

    from marrowscope.apps.field_view import cell_view, count_view, drop_count

    draw_field((900, 700), [(300, 350), (620, 300)], seed=1).save(tmp_path / "two.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    gallery, diff, rows, text, downloads, state = count_view(
        bundled, NucleusDetector(), [str(tmp_path / "two.png"), str(tmp_path / "bad.png")], None, UM, 200)
    assert len(gallery) == 1 and Path(gallery[0][0]).is_file()
    assert len(rows) == 2 and "2 cell(s) counted" in text and "bad.png" in text and "Advisories" in text
    assert sum(r[1] for r in diff) == 2 and {Path(d).name for d in downloads} >= {"cells.csv", "count.json"}
    crop, top, advice = cell_view(bundled, None, state, gr.SelectData(None, {"index": [1, 2], "value": ""}))
    assert crop.size[0] > 100 and len(top) == 3 and advice
    with pytest.raises(gr.Error, match="Upload one or more field"):
        count_view(bundled, NucleusDetector(), [], state, UM, 200)
    drop_count(state)
    assert not Path(state["dir"]).exists()
    (tmp_path / "two.png").unlink()  # Gradio's cache sweeps uploads too
    with pytest.raises(gr.Error, match="expired"):
        cell_view(bundled, None, state, gr.SelectData(None, {"index": [0, 0], "value": ""}))


@pytest.mark.slow
def test_train_detector_writes_a_folder_that_count_uses(tmp_path):
    from marrowscope.core.detect import Detector
    from marrowscope.core.samples import default_data_dir

    data = (default_data_dir() or Path("../shared/data/bone-marrow-7")).parent / "blood-fields"
    if not (data / "images" / "train").is_dir():
        pytest.skip(f"{data} is not here: the boxed frames train the detector")
    out = tmp_path / "model" / "detector"
    assert main(["train-detector", str(data), "--out", str(out), "--epochs", "1", "--limit", "8",
                 "--batch-size", "4"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert {"model.onnx", "model.safetensors", "config.json"} <= {p.name for p in out.iterdir()}
    assert 0 <= cfg["threshold"] <= 1 and cfg["validation"]["frames"] == 8 and cfg["tile"] == TILE
    frame = sorted((data / "images" / "val").glob("*.jpg"))[0]
    image = Image.open(frame).convert("RGB")
    boxes = find_cells(Detector(out), image, field_scale(image, None, 0.095), threshold=0.0)
    assert all(0 <= b.x0 < b.x1 <= image.width and 0 <= b.y0 < b.y1 <= image.height for b in boxes)


class _Unsure:
    """A detector sure of nothing: one box over the tile's content, scored under its threshold."""

    name, tile, threshold = "unsure", TILE, 0.34

    def tile_boxes(self, tile):
        filled = np.argwhere((tile != 0.5).any(axis=2))
        (y0, x0), (y1, x1) = filled.min(0), filled.max(0)
        return np.array([[x0 + 2, y0 + 2, x1 - 2, y1 - 2]], np.float32), np.array([0.2], np.float32)


def test_a_crop_counts_its_centred_cell_even_below_the_field_threshold(bundled, tmp_path):
    """A crop holds its cell at its centre (bone-marrow-7: 14 of 525 test crops scored 0.10-0.32 there):
    it is counted; in a larger field such a box is not."""
    counter = FieldCounter(bundled, _Unsure(), pixel_size=UM)
    draw_field((200, 200), [(100, 100)], red_cells=0).save(tmp_path / "crop.png")
    field = counter.count_one(tmp_path / "crop.png", "crop")
    assert len(field.counted) == 1 and "under the field threshold" in field.counted[0].note
    assert field.counted[0].prediction.call == bundled.predict_one(tmp_path / "crop.png", UM).call
    draw_field((1200, 900), [(600, 450)], red_cells=0).save(tmp_path / "field.png")
    assert counter.count_one(tmp_path / "field.png", "field").counted == []

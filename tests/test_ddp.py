"""Data-parallel training through Lightning's DDP: two CPU processes (gloo) on tiny data."""

import csv
import subprocess
import sys

import pytest

from marrowscope.core.artifacts import load_model_folder
from tests.conftest import make_dataset


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    data = make_dataset(tmp_path / "cells", per_class=10)
    run = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "marrowscope", "train", str(data), "--out", str(run), "--arch", "test_efficientnet",
         "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--workers", "0", "--accelerator", "cpu",
         "--devices", "2"],
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    # Lightning's own lines: two ranks really ran
    assert "Starting with 2 processes" in res.stderr and "GLOBAL_RANK: 1" in res.stderr
    with open(run / "history.csv") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2]  # written once, by rank 0
    load_model_folder(run / "model")


@pytest.mark.slow
def test_predict_and_evaluate_over_two_ddp_ranks_match_one_process(tiny_run, tmp_path):
    from marrowscope.core.batch import run_batch
    from marrowscope.core.predict import Predictor
    from tests.conftest import synthetic_cell

    folder = tmp_path / "cells"
    folder.mkdir()
    for k in range(11):  # odd: the ranks get uneven shares
        synthetic_cell(k % 7, k).save(folder / f"c{k:02d}.png")
    (folder / "broken.png").write_bytes(b"nope")
    out = tmp_path / "ddp.csv"
    res = subprocess.run(
        [sys.executable, "-m", "marrowscope", "predict", str(folder), "--model", str(tiny_run / "model"),
         "--out", str(out), "--devices", "2", "--accelerator", "cpu", "--batch-size", "4", "--quiet"],
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("differential count of 11") == 1  # rank 0 alone reports
    single = run_batch(Predictor(tiny_run / "model", backend="torch"), [folder])
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["file"] for r in rows] == [r["file"] for r in single.rows]
    for a, b in zip(rows, single.rows):
        assert a["status"] == b["status"] and a["predicted"] == b["predicted"]
        if a["status"] == "ok":
            assert (a["scale"], a["focus_blur_px"]) == (b["scale"], b["focus_blur_px"])
            assert float(a["probability"]) == pytest.approx(b["probability"], abs=1e-4)
    assert not list(tmp_path.glob("ddp.csv.partial*"))  # the ranks' partial files go once the CSV is whole
    # an interrupted DDP run's ranks each kept some results: --resume over two ranks does only the rest
    from marrowscope.core.partial import PartialFile, identity

    p = Predictor(tiny_run / "model")
    first = PartialFile(out, identity(p, "predict"), resume=False)
    for rank, chunk in ((0, sorted(folder.iterdir())[:3]), (1, sorted(folder.iterdir())[3:5])):
        keep = first.for_rank(rank)
        for r in p.predict_many(chunk):
            keep.add(r)
        keep.close()
    whole = out.read_bytes()
    out.unlink()
    res = subprocess.run(
        [sys.executable, "-m", "marrowscope", "predict", str(folder), "--model", str(tiny_run / "model"),
         "--out", str(out), "--devices", "2", "--accelerator", "cpu", "--batch-size", "4", "--quiet", "--resume"],
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert out.read_bytes() == whole and not list(tmp_path.glob("ddp.csv.partial*"))

    ev = subprocess.run(
        [sys.executable, "-m", "marrowscope", "evaluate", str(tiny_run / "model"), str(tiny_run / "manifest.csv"),
         "--split", "val", "--out", str(tmp_path / "ev"), "--devices", "2", "--accelerator", "cpu"],
        capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    import json

    from marrowscope.report.evaluate import evaluate

    m2 = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    m1 = evaluate(Predictor(tiny_run / "model", backend="torch"), tiny_run / "manifest.csv", "val")
    assert m2["images"] == m1["images"] and m2["confusion_matrix"] == m1["confusion_matrix"]


@pytest.mark.slow
def test_ddp_ranks_read_disjoint_shares_of_a_set_decoded_per_item(tmp_path):
    import json
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench" / "ddp_shares.py"
    res = subprocess.run([sys.executable, str(bench), "--work", str(tmp_path)], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    shares = json.loads((tmp_path / "shares.json").read_text())
    assert shares["overlap"] == [] and shares["covers_training_split"]
    assert shares["rank0"] == shares["rank1"] == shares["training_images"] // 2

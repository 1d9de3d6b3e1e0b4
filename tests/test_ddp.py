"""Data-parallel training through Lightning's DDP: two CPU processes (gloo) on tiny data."""

import csv
import subprocess
import sys

import pytest

from marrowscope.artifacts import load_model_folder
from tests.conftest import make_dataset


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    data = make_dataset(tmp_path / "cells", per_class=10)
    run = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "marrowscope", "train", str(data), "--out", str(run), "--model", "test_efficientnet",
         "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--workers", "0", "--accelerator", "cpu",
         "--devices", "2"],
        capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "world_size=2" in res.stderr.replace(" ", "") or "distributed" in res.stderr.lower()
    with open(run / "history.csv") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2]  # written once, by rank 0
    load_model_folder(run / "model")

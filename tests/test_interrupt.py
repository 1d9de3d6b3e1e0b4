"""A training killed mid-run (SIGKILL) leaves no half-written model folder and resumes to the end."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from marrowscope.core.artifacts import load_model_folder
from tests.conftest import make_dataset


@pytest.mark.slow
def test_sigkill_then_resume(tmp_path):
    data = make_dataset(tmp_path / "cells", per_class=40)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "marrowscope", "train", str(data), "--out", str(run), "--arch",
           "test_efficientnet", "--img-size", "48", "--epochs", "6", "--batch-size", "8", "--workers", "0",
           "--accelerator", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    history = run / "history.csv"
    while time.time() < deadline and proc.poll() is None:
        if (run / "checkpoints" / "last.ckpt").exists() and history.exists() and history.read_text().count("\n") >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed"
    time.sleep(0.5)  # into the next epoch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "model").exists()  # no model folder, half-written or otherwise
    with open(history) as fh:
        done = len(list(csv.DictReader(fh)))
    assert 1 <= done < 6

    resumed = subprocess.run([*cmd[:-6], "--resume", "--workers", "0", "--accelerator", "cpu"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr
    with open(history) as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4, 5, 6]
    net, info = load_model_folder(run / "model")
    assert info.architecture == "test_efficientnet"

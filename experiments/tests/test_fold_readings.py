"""experiments/fold_readings.py: the out-of-fold logits of a cross-validation's fold models, read again."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from marrowscope.core.artifacts import write_settings
from marrowscope.core.classes import CLASSES
from marrowscope.core.config import TrainConfig
from marrowscope.fit.cv import cross_validate

SCRIPT = Path(__file__).parents[1] / "fold_readings.py"


@pytest.mark.slow
def test_fold_readings_repeat_cvs_first_view_and_add_a_smaller_second(tmp_path, tiny_run):
    manifest = tiny_run / "manifest.csv"
    cfg = TrainConfig(data=str(manifest), out=str(tmp_path / "cv"), model="test_efficientnet", img_size=32, epochs=1,
                      batch_size=16, lr=5e-3, workers=0, accelerator="cpu")
    cross_validate(cfg, folds=2)
    oof = np.load(tmp_path / "cv" / "oof.npz")
    rows = oof["logits"][0]
    # each fold model on its own fold again, in oof.npz's order; a second view read smaller
    like = shutil.copytree(tiny_run / "model", tmp_path / "like")
    write_settings(like, scale={"pixel_size_um": 0.1, "field_px": 48, "how": "set by the test"})
    for args, views in (([], 1), (["--like", str(like), "--zoom", "0.6"], 2)):
        run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "cv" / "oof.npz"), "--folds",
                              str(tmp_path / "cv"), "--out", str(tmp_path / "fr.npz"), "--data-root",
                              str(tiny_run.parent / "cells"), *args], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        got = np.load(tmp_path / "fr.npz")
        assert got["logits"].shape == (views, len(rows), len(CLASSES)) and (got["folds"] == oof["folds"]).all()
        if views == 1:  # the same fold models, the same preprocessing: cv's own first view
            assert np.allclose(got["logits"][0], oof["logits"][0], atol=1e-4)
        else:
            assert not np.allclose(got["logits"][1], got["logits"][0], atol=1e-3)

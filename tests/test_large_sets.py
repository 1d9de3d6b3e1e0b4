"""Training that does not hold a large set in memory: images decoded per item in the loader's
workers, files that vanish or break mid-run skipped and counted, --max-steps, any class list."""

import csv
import json

import pytest
import torch

from marrowscope.core.config import TrainConfig
from tests.conftest import make_dataset


@pytest.mark.slow
def test_large_set_is_decoded_per_item_and_goes_past_broken_files(tmp_path, monkeypatch, capfd):
    from marrowscope.core.data import prepare
    from marrowscope.core.manifest import write_manifest
    from marrowscope.fit import datasets
    from marrowscope.fit.train import fit

    monkeypatch.setattr(datasets, "CACHE_BUDGET_BYTES", 0)  # as if the set were larger than memory
    samples, _ = prepare(make_dataset(tmp_path / "cells", per_class=10))
    manifest = write_manifest(samples, tmp_path / "manifest.csv")
    train = [s for s in samples if s.split == "train"]
    train[5].path.unlink()                 # vanished after the manifest was written
    train[6].path.write_bytes(b"broken")   # corrupt
    cfg = TrainConfig(data=str(manifest), out=str(tmp_path / "run"), model="test_efficientnet", img_size=32,
                      epochs=20, max_steps=8, batch_size=8, workers=2, accelerator="cpu", checks=False)
    model = fit(cfg)
    err = capfd.readouterr().err  # the workers' lines too
    assert (model / "model.safetensors").is_file()
    assert "could not be read and was skipped" in err and train[5].path.name in err and train[6].path.name in err
    with open(tmp_path / "run" / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    # 6 steps an epoch (49 training images, batch 8): the 8th step ends the run inside epoch 2
    assert len(rows) == 2 and float(rows[-1]["images_per_s"]) > 0


def test_loader_workers_none_on_the_cpu_and_the_free_cores_on_a_gpu(monkeypatch):
    import os

    from marrowscope.fit.datasets import loader_workers

    assert TrainConfig().workers is None  # train's default: chosen where it runs
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert loader_workers(None, on_gpu=False) == 0  # the step's own threads already use every core
    assert loader_workers(None, on_gpu=True) == 8
    assert loader_workers(None, on_gpu=True, processes_per_node=4) == 4  # DDP: the node's cores shared out
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert loader_workers(None, on_gpu=True, processes_per_node=-1) == 2  # --devices -1: every GPU of the node
    assert loader_workers(3, on_gpu=False) == 3 and loader_workers(0, on_gpu=True) == 0  # as asked
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert loader_workers(None, on_gpu=True) == 1


def test_small_sets_stay_in_memory_and_large_ones_do_not(tmp_path, monkeypatch):
    from marrowscope.core.data import scan_folder
    from marrowscope.fit import datasets
    from marrowscope.fit.datasets import CellDataset

    samples, _ = scan_folder(make_dataset(tmp_path / "cells", per_class=2))
    classes = sorted({s.label for s in samples})
    assert CellDataset(samples, classes, None, raw_size=32).cache is True
    monkeypatch.setattr(datasets, "CACHE_BUDGET_BYTES", 32 * 32 * 3 * len(samples) - 1)
    lazy = CellDataset(samples, classes, None, raw_size=32)
    assert lazy.cache is False and lazy.images is None and lazy[0][0].shape == (3, 32, 32)


FULL_21 = ("ABE", "ART", "BAS", "BLA", "EBO", "EOS", "FGC", "HAC", "KSC", "LYI", "LYT", "MMZ", "MON", "MYB", "NGB",
           "NGS", "NIF", "OTH", "PEB", "PLM", "PMO")


@pytest.mark.slow
def test_twenty_one_classes_train_evaluate_predict_and_show(tmp_path):
    from marrowscope.apps.app import batch
    from marrowscope.apps.cli import main
    from marrowscope.apps.views import data_views
    from marrowscope.core.predict import Predictor
    from marrowscope.report.plots import distribution_figure

    data = make_dataset(tmp_path / "cells", per_class=6, classes=FULL_21)
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--arch", "test_efficientnet", "--img-size",
                 "32", "--epochs", "1", "--batch-size", "16", "--workers", "0", "--accelerator", "cpu",
                 "--classes", ",".join(FULL_21), "--no-checks"]) == 0
    model = tmp_path / "run" / "model"
    assert json.loads((model / "config.json").read_text())["label_names"] == list(FULL_21)
    assert main(["evaluate", "--model", str(model), str(tmp_path / "run" / "manifest.csv"), "--split", "all",
                 "--out", str(tmp_path / "ev")]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert len(m["confusion_matrix"]) == 21 and set(m["per_class"]) == set(FULL_21)
    images = [str(p) for c in ("MYB", "PLM") for p in sorted((data / c).iterdir())[:2]]
    rows, counts, decisions, *_ = batch(Predictor(model), images)
    assert len(rows) == 4 and len(counts) == 21 and "Myelocyte (MYB)" in [c[0] for c in counts]
    distribution_figure({c: 6 for c in FULL_21})  # 21 bars and wedges, each its own colour
    fig, table, _ = data_views(model, list(FULL_21))
    assert fig is not None and len(table) == 21 and all(r[-1] == 6 for r in table)

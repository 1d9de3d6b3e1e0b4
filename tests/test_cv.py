"""Cross-validation: folds, out-of-fold predictions, reuse of finished folds, and distillation from
them into a model trained on every non-test image (no epoch chosen on validation images)."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from marrowscope.core.classes import CLASSES
from marrowscope.core.config import TrainConfig
from marrowscope.core.data import Sample, assign_folds
from marrowscope.core.errors import MarrowscopeError


def test_folds_are_stratified_and_keep_twins_together(tmp_path):
    samples = []
    for c in CLASSES[:3]:
        for k in range(10):
            p = tmp_path / f"{c}{k}.png"
            p.write_bytes(f"{c}{k}".encode())
            samples.append(Sample(p, c))
    twin = tmp_path / "twin.png"
    twin.write_bytes(f"{CLASSES[0]}0".encode())  # byte-identical to the first image of class BLA
    samples.append(Sample(twin, CLASSES[0]))
    folds = assign_folds(samples, 5, seed=0)
    assert folds[0] == folds[-1]
    for c in CLASSES[:3]:
        per_fold = np.bincount([f for s, f in zip(samples[:30], folds[:30]) if s.label == c], minlength=5)
        assert per_fold.tolist() == [2] * 5
    assert folds == assign_folds(samples, 5, seed=0) and folds != assign_folds(samples, 5, seed=1)
    with pytest.raises(MarrowscopeError, match="at least 2 folds"):
        assign_folds(samples, 1, 0)
    with pytest.raises(MarrowscopeError, match="fewer than 20 distinct"):
        assign_folds(samples, 20, 0)


@pytest.mark.slow
def test_cv_then_distilled_final_model(tmp_path, tiny_run):
    from marrowscope.apps.cli import main
    from marrowscope.fit.cv import cross_validate

    manifest = tiny_run / "manifest.csv"
    cfg = TrainConfig(data=str(manifest), out=str(tmp_path / "cv"), model="test_efficientnet", img_size=32, epochs=2,
                      batch_size=16, lr=5e-3, workers=0, accelerator="cpu", augment="lab", augment_on="device")
    summary = cross_validate(cfg, folds=2)
    rows = list(csv.DictReader(open(tmp_path / "cv" / "oof.csv")))
    pool = [r for r in csv.DictReader(open(manifest)) if r["split"] != "test"]
    assert len(rows) == len(pool) == summary["images"] and {r["fold"] for r in rows} == {"0", "1"}
    assert len({r["path"] for r in rows}) == len(rows)  # each image predicted once, by the model that did not see it
    assert all(abs(sum(float(r[f"p_{c}"]) for c in CLASSES) - 1) < 1e-3 for r in rows)
    assert set(summary["mean_sd"]["no_tta"]) == {"macro_f1", "accuracy", "blast_recall"}
    assert summary["test_ensemble"]["images"] == sum(1 for r in csv.DictReader(open(manifest)) if r["split"] == "test")
    oof = np.load(tmp_path / "cv" / "oof.npz")
    assert oof["logits"].shape == (4, len(rows), len(CLASSES))
    # finished folds are reused, not trained again
    stamp = (tmp_path / "cv" / "fold0" / "model" / "model.safetensors").stat().st_mtime
    cross_validate(cfg, folds=2)
    assert (tmp_path / "cv" / "fold0" / "model" / "model.safetensors").stat().st_mtime == stamp
    # the final model: every non-test image, soft targets from the folds, the last epoch kept
    assert main(["train", str(tmp_path / "cv" / "final.csv"), "--out", str(tmp_path / "final"), "--arch",
                 "test_efficientnet", "--img-size", "32", "--epochs", "2", "--batch-size", "16", "--workers", "0",
                 "--accelerator", "cpu", "--keep", "last", "--distill", str(tmp_path / "cv" / "oof.csv")]) == 0
    info = json.loads((tmp_path / "final" / "model" / "config.json").read_text())["marrowscope"]
    assert info["train_images"] == len(pool) and info["val_images"] == 0 and info["distilled_from"] == "oof.csv"
    assert "domain" in info  # the domain check is fitted without a validation split too
    assert str(tmp_path) not in (tmp_path / "final" / "config_train.json").read_text()  # distill path relative


def test_distillation_loss_mixes_labels_and_soft_targets():
    from torch.nn import functional as F

    from marrowscope.core.model import create_network
    from marrowscope.fit.module import CellClassifier

    torch.manual_seed(0)
    module = CellClassifier(create_network("test_efficientnet", 7), 7, label_smoothing=0.1, distill=0.3)
    module.log = module.log_dict = lambda *a, **k: None
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    soft = torch.softmax(torch.randn(4, 7), 1)
    module.eval()  # no dropout: the same logits in both computations
    logits = module(x)
    expected = 0.7 * F.cross_entropy(logits, y, label_smoothing=0.1) + \
        0.3 * torch.sum(-soft * F.log_softmax(logits, 1), 1).mean()
    assert module._step((x, y, soft), "train").item() == pytest.approx(expected.item(), rel=1e-5)
    assert module._step((x, y), "train").item() != pytest.approx(expected.item(), rel=1e-3)


def test_soft_targets_must_cover_the_training_images(tmp_path, tiny_run):
    from marrowscope.fit.train import fit

    bad = tmp_path / "soft.csv"
    bad.write_text("path,label\nBLA/x.png,BLA\n")
    cfg = TrainConfig(data=str(tiny_run / "manifest.csv"), out=str(tmp_path / "r"), model="test_efficientnet",
                      img_size=32, epochs=1, workers=0, accelerator="cpu", distill=str(bad))
    with pytest.raises(MarrowscopeError, match="not a table of soft targets"):
        fit(cfg)
    shutil.rmtree(tmp_path / "r", ignore_errors=True)
    bad.write_text("path,label," + ",".join(f"p_{c}" for c in CLASSES) + "\nBLA/x.png,BLA" + ",0.1" * 7 + "\n")
    with pytest.raises(MarrowscopeError, match="lack"):
        fit(cfg)


def test_device_augmentation_needs_the_lab_recipe(tmp_path, tiny_run):
    from marrowscope.fit.train import fit

    cfg = TrainConfig(data=str(tiny_run / "manifest.csv"), out=str(tmp_path / "r"), model="test_efficientnet",
                      img_size=32, epochs=1, workers=0, accelerator="cpu", augment="light", augment_on="device")
    with pytest.raises(MarrowscopeError, match="--augment lab"):
        fit(cfg)


def test_device_augmentation_sharpens_only_in_lab_sharp():
    from marrowscope.fit.datasets import device_augmentation

    cfg = {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    for augment, sharpens in (("lab", False), ("lab-sharp", True)):
        aug = device_augmentation(TrainConfig(img_size=32, augment=augment, augment_on="device"), cfg, on_gpu=False)
        assert (aug.amount is not None) == sharpens, augment
    assert device_augmentation(TrainConfig(augment="light", augment_on="auto"), cfg, on_gpu=True) is None

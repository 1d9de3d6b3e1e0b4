"""Training end to end on synthetic cells with a tiny timm model: run folder, history, resume, errors."""

import csv
import json
import shutil

import pytest
import torch

from marrowscope.core.artifacts import read_model_info, write_settings
from marrowscope.core.classes import CLASSES
from marrowscope.core.config import TrainConfig
from marrowscope.core.errors import MarrowscopeError
from marrowscope.fit.train import HISTORY_FIELDS, fit
from tests.conftest import make_dataset


def test_run_folder_contents(tiny_run):
    for name in ("history.csv", "curves.png", "config_train.json", "manifest.csv", "checkpoints/last.ckpt"):
        assert (tiny_run / name).is_file(), name
    model = tiny_run / "model"
    assert {"model.safetensors", "config.json", "history.csv", "manifest.csv"} <= {p.name for p in model.iterdir()}
    info = read_model_info(model)
    assert info.classes == list(CLASSES) and info.architecture == "test_efficientnet"
    with open(tiny_run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert list(rows[0]) == HISTORY_FIELDS
    assert all(0 <= float(r[k]) <= 1 for r in rows for k in ("train_acc", "train_f1", "val_acc", "val_f1"))
    assert all(float(r["train_loss"]) > 0 for r in rows)
    assert all(0 < float(r["data_wait_s"]) < float(r["seconds"]) for r in rows)
    best = max(float(r["val_f1"]) for r in rows)
    assert info.extra["best_val_f1"] == pytest.approx(best, abs=1e-3)  # best epoch by val macro-F1 was kept
    assert json.loads((tiny_run / "config_train.json").read_text())["model"] == "test_efficientnet"


def test_tiny_model_learns_the_synthetic_classes(tiny_run):
    with open(tiny_run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


def _cfg(tmp_path, data, **kw):
    base = dict(data=str(data), out=str(tmp_path / "run"), model="test_efficientnet", img_size=32, epochs=1,
                batch_size=8, workers=0, accelerator="cpu")
    return TrainConfig(**{**base, **kw})


@pytest.mark.slow
def test_existing_run_is_not_overwritten_and_resume_needs_a_checkpoint(tmp_path):
    data = make_dataset(tmp_path / "cells", per_class=6)
    with pytest.raises(MarrowscopeError, match="no checkpoint"):
        fit(_cfg(tmp_path, data, resume=True))
    fit(_cfg(tmp_path, data, epochs=1))
    with pytest.raises(MarrowscopeError, match="--resume"):
        fit(_cfg(tmp_path, data, epochs=2))


@pytest.mark.slow
def test_same_seed_same_metrics(tmp_path):
    data = make_dataset(tmp_path / "cells", per_class=6)
    runs = []
    for k in range(2):
        fit(_cfg(tmp_path, data, out=str(tmp_path / f"r{k}"), epochs=2))
        with open(tmp_path / f"r{k}" / "history.csv") as fh:
            runs.append([{f: r[f] for f in HISTORY_FIELDS[1:7]} for r in csv.DictReader(fh)])
    assert runs[0] == runs[1]


def test_class_without_images_is_an_error(tmp_path):
    data = make_dataset(tmp_path / "cells", per_class=6, classes=CLASSES[:3])
    with pytest.raises(MarrowscopeError, match="not found"):
        fit(_cfg(tmp_path, data))


class _RunsCode:
    """An object whose unpickling runs code: writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path, tiny_run):
    import shutil

    import torch

    run = shutil.copytree(tiny_run, tmp_path / "run")
    last = run / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    marker = tmp_path / "ran"
    torch.save({**state, "payload": _RunsCode(marker)}, last)
    cfg = TrainConfig(data=str(tiny_run.parent / "cells"), out=str(run), resume=True, workers=0, accelerator="cpu")
    with pytest.raises(MarrowscopeError, match="could run code"):
        fit(cfg)
    assert not marker.exists()


def test_saved_files_hold_no_absolute_paths(tiny_run):
    for name in ("config_train.json", "manifest.csv", "model/config.json", "model/manifest.csv"):
        text = (tiny_run / name).read_text()
        assert str(tiny_run.parent) not in text and "/tmp/" not in text, name
    from marrowscope.core.manifest import read_manifest

    # the model folder's manifest reads from where it lies
    assert all(s.path.exists() for s in read_manifest(tiny_run / "model" / "manifest.csv"))


def test_epoch_log_counts_the_wait_between_steps_not_the_steps(monkeypatch, tmp_path):
    import time
    from types import SimpleNamespace

    import torch

    from marrowscope.fit.train import EpochLog

    # epoch start 0; batch 1 fetched by 1.0, its step to 3.0; batch 2 by 3.5, its step to 6.0; epoch end 6.0
    clock = [0.0, 1.0, 3.0, 3.5, 6.0, 6.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock.pop(0))
    logged = {}
    module = SimpleNamespace(log_dict=lambda values, **_: logged.update(values))
    trainer = SimpleNamespace(is_global_zero=False, logger=None, world_size=1,
                              optimizers=[SimpleNamespace(param_groups=[{"lr": 0.1}])])
    log = EpochLog(tmp_path / "history.csv")
    log.on_train_epoch_start(trainer, module)
    for i in range(2):
        log.on_train_batch_start(trainer, module, None, i)
        log.on_train_batch_end(trainer, module, None, (torch.zeros(4, 3), torch.zeros(4)), i)
    log.on_train_epoch_end(trainer, module)
    assert logged["data_wait_s"] == pytest.approx(1.5) and logged["seconds"] == pytest.approx(6.0)
    assert logged["images_per_s"] == pytest.approx(8 / 6)


def test_validation_reads_images_through_the_preprocessing_the_folder_ships(tiny_model, tmp_path):
    """The epoch kept is chosen on what predict runs: the training scale and focus matching, then the eval
    transform; not on the bare eval transform."""
    from marrowscope.core.data import load_samples
    from marrowscope.core.images import decode_image
    from marrowscope.core.predict import Predictor
    from marrowscope.core.preprocess import eval_transform
    from marrowscope.fit.train import run_datasets

    data = make_dataset(tmp_path / "cells", per_class=4)
    cfg = _cfg(tmp_path, data)
    samples, _ = load_samples(data, CLASSES, val=0.5, test=0.0, seed=0)
    model = shutil.copytree(tiny_model, tmp_path / "m")
    shipped = {"scale": {"pixel_size_um": 0.1, "field_px": 40, "how": "set by the test"},
               "focus": {"median": 0.001, "above": 0.002, "how": "set by the test"}}
    write_settings(model, **shipped)
    info = read_model_info(model)
    _, val_ds = run_datasets(cfg, samples, info.data_config, shipped=shipped)
    x, label = val_ds[0]
    image = decode_image(val_ds.samples[0].path)
    predictor = Predictor(model, backend="torch")
    assert torch.equal(x, torch.from_numpy(predictor.load(image)[0]))  # the very input predict gives the network
    assert not torch.equal(x, eval_transform(info.data_config)(image))  # which the bare eval transform is not
    _, plain = run_datasets(cfg, samples, info.data_config)  # nothing measured: the folder ships none either
    assert torch.equal(plain[0][0], eval_transform(info.data_config)(image))

"""fit(config) -> run folder. PyTorch Lightning is the engine: checkpoints, resume, early
stopping, mixed precision on GPU, and DDP over several GPUs or nodes.

Run folder layout::

    runs/NAME/
      model/              the model folder (weights, config.json) + copies of the reports below
      history.csv         per epoch: train/val loss, accuracy, macro-F1, learning rate, seconds
      curves.png          loss, accuracy and F1 per epoch
      config_train.json   the resolved TrainConfig
      manifest.csv        the images and split used
      checkpoints/        Lightning checkpoints (last.ckpt for --resume, best.ckpt)
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping, ModelCheckpoint

from marrowscope.artifacts import save_model_folder
from marrowscope.config import TrainConfig
from marrowscope.data import (CellDataset, SPLITS, count_table, format_skipped, format_table, load_samples,
                              make_loader, write_manifest)
from marrowscope.errors import MarrowscopeError
from marrowscope.model import create_network
from marrowscope.module import CellClassifier
from marrowscope.transforms import data_config_for, eval_transform, train_transform

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "train_f1", "val_loss", "val_acc", "val_f1", "lr",
                  "seconds", "images_per_s"]


class History(Checkpoint):
    """Write one history.csv row per epoch and print it.

    It subclasses ``Checkpoint`` only so that Lightning calls it after the module's own
    ``on_train_epoch_end``, when the epoch's training metrics have been logged.
    """

    def __init__(self, path: Path, n_train: int):
        self.path, self.n_train, self._t0 = path, n_train, 0.0

    def on_train_start(self, trainer, pl_module):
        # After a resume, drop rows of epochs the checkpoint does not include (killed in between).
        if trainer.is_global_zero and self.path.exists() and trainer.current_epoch > 0:
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= trainer.current_epoch]
            with open(self.path, "w", newline="") as fh:
                w = csv.DictWriter(fh, HISTORY_FIELDS)
                w.writeheader()
                w.writerows(rows)

    def on_train_epoch_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        secs = time.perf_counter() - self._t0
        row = {"epoch": trainer.current_epoch + 1, **{k: m.get(k, float("nan")) for k in HISTORY_FIELDS[1:7]},
               "lr": trainer.optimizers[0].param_groups[0]["lr"], "seconds": round(secs, 2),
               "images_per_s": round(self.n_train / secs, 1)}
        new = not self.path.exists() or trainer.current_epoch == 0
        with open(self.path, "w" if new else "a", newline="") as fh:
            w = csv.DictWriter(fh, HISTORY_FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()})
        print(f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} "
              f"F1 {row['train_f1']:.4f} | val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f} "
              f"F1 {row['val_f1']:.4f} | lr {row['lr']:.2e} | {secs:.1f} s", file=sys.stderr, flush=True)


RUNTIME_FIELDS = ("accelerator", "devices", "num_nodes", "workers", "max_time", "precision", "data_root")


def fit(cfg: TrainConfig) -> Path:
    """Train a classifier as ``cfg`` says and write the run folder; returns the model folder.

    With ``cfg.resume`` the run folder's saved config is used (only where and how it runs may
    change: accelerator, devices, workers, time limit, data root), and training continues from
    ``checkpoints/last.ckpt``, the end of the last finished epoch.
    """
    out = Path(cfg.out)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if cfg.resume:
        if not last.exists() or not (out / "config_train.json").exists():
            raise MarrowscopeError(f"--resume: no checkpoint to resume from at '{last}'.")
        saved = TrainConfig.load(out / "config_train.json")
        for name in RUNTIME_FIELDS:
            setattr(saved, name, getattr(cfg, name))
        cfg, cfg.resume = saved, True
        print(f"resuming '{out}' with its saved config ({cfg.model}, {cfg.epochs} epochs)", file=sys.stderr)
    elif last.exists():
        raise MarrowscopeError(f"'{out}' already holds a training run; pass --resume to continue it or "
                               "choose another --out.")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out.mkdir(parents=True, exist_ok=True)
    samples, skipped = load_samples(cfg.data, cfg.classes, val=cfg.val, test=cfg.test, seed=cfg.seed,
                                    data_root=cfg.data_root)
    if skipped:
        print(format_skipped(skipped), file=sys.stderr)
    table = count_table(samples, cfg.classes)
    empty = [c for c, row in table.items() if row["train"] == 0 or row["val"] == 0]
    if empty:
        raise MarrowscopeError(f"class(es) {', '.join(empty)} have no training or no validation images; "
                               f"each of {list(cfg.classes)} needs both.")
    print(format_table(table), file=sys.stderr)

    net = create_network(cfg.model, len(cfg.classes), pretrained=cfg.pretrained, init_weights=cfg.init_weights,
                         drop_rate=cfg.drop_rate)
    data_config = data_config_for(net, cfg.img_size)
    by_split = {sp: [s for s in samples if s.split == sp] for sp in SPLITS}
    train_ds = CellDataset(by_split["train"], cfg.classes, train_transform(data_config), workers=cfg.workers)
    val_ds = CellDataset(by_split["val"], cfg.classes, eval_transform(data_config), workers=cfg.workers)
    for ds in (train_ds, val_ds):
        if ds.skipped:
            print(format_skipped(ds.skipped), file=sys.stderr)

    on_gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())
    module = CellClassifier(net, len(cfg.classes), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            label_smoothing=cfg.label_smoothing, mixup=cfg.mixup)
    best_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_f1", mode="max", save_last=True,
                              save_top_k=1, enable_version_counter=False)
    history = History(out / "history.csv", len(train_ds))
    trainer = L.Trainer(
        max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
        strategy="ddp" if cfg.devices * cfg.num_nodes > 1 else "auto",
        precision=cfg.precision or ("bf16-mixed" if on_gpu else "32-true"),
        deterministic=not on_gpu, max_time=cfg.max_time, num_sanity_val_steps=0, logger=False,
        callbacks=[best_cb, EarlyStopping("val_f1", mode="max", patience=cfg.patience), history],
        default_root_dir=out, log_every_n_steps=10,
    )
    if trainer.is_global_zero and not cfg.resume:
        cfg.save(out / "config_train.json")
        write_manifest(samples, out / "manifest.csv", _common_root(samples))
    workers = cfg.workers if cfg.devices * cfg.num_nodes == 1 else min(cfg.workers, 2)
    trainer.fit(module, make_loader(train_ds, cfg.batch_size, workers, True),
                make_loader(val_ds, cfg.batch_size * 2, workers, False),
                ckpt_path=str(last) if cfg.resume else None)
    if not trainer.is_global_zero:
        return out / "model"

    best = best_cb.best_model_path or str(last)
    state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]  # our own checkpoint
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    net = net.to(memory_format=torch.contiguous_format).float()
    from marrowscope.plots import plot_history

    plot_history(out / "history.csv", out / "curves.png")
    best_score = best_cb.best_model_score
    extra = {"trained_on": str(Path(cfg.data).resolve()), "best_val_f1": None if best_score is None else round(float(best_score), 4),
             "train_images": len(train_ds), "val_images": len(val_ds),
             "recipe": {k: getattr(cfg, k) for k in ("model", "img_size", "epochs", "batch_size", "lr",
                                                      "weight_decay", "label_smoothing", "mixup", "pretrained",
                                                      "seed")},
             "init_weights": Path(cfg.init_weights).name if cfg.init_weights else None}
    files = {n: out / n for n in ("history.csv", "curves.png", "config_train.json", "manifest.csv")
             if (out / n).exists()}
    model_dir = save_model_folder(net, out / "model", cfg.classes, data_config, extra=extra, half=cfg.half,
                                  files=files)
    print(f"best epoch val macro-F1 {extra['best_val_f1']} (validation split, {len(val_ds)} images); "
          f"model folder: {model_dir}", file=sys.stderr)
    return model_dir


def _common_root(samples) -> Path:
    import os

    return Path(os.path.commonpath([str(Path(s.path).resolve().parent.parent) for s in samples]))

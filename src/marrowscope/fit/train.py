"""fit(config) -> run folder. PyTorch Lightning is the engine: checkpoints, resume, early
stopping, mixed precision on GPU, and DDP over several GPUs or nodes.

Run folder layout::

    runs/NAME/
      model/              the model folder (weights, config.json) + copies of the reports below
      history.csv         per epoch: train/val loss, accuracy, macro-F1, learning rate, seconds,
                          images/s, and seconds spent waiting for batches (data_wait_s)
      logs/version_N/     Lightning's CSVLogger (metrics.csv), one per run or resume: history.csv's source
      curves.png          loss, accuracy and F1 per epoch
      config_train.json   the resolved TrainConfig
      manifest.csv        the images and split used
      checkpoints/        Lightning checkpoints (last.ckpt for --resume, best.ckpt)
"""

from __future__ import annotations

import csv
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from marrowscope.core.artifacts import save_model_folder
from marrowscope.core.config import TrainConfig
from marrowscope.core.csvfiles import write_csv
from marrowscope.core.data import count_table, format_skipped, format_table, load_samples
from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.manifest import write_manifest
from marrowscope.core.model import create_network
from marrowscope.core.preprocess import Preprocess, eval_transform
from marrowscope.fit.checks import fit_checks, preprocessing_settings
from marrowscope.fit.datasets import CellDataset, device_augmentation, loader_workers, make_loader, read_soft_targets
from marrowscope.fit.module import CellClassifier
from marrowscope.fit.shards import is_shards, read_meta, shard_dataset, shard_loader
from marrowscope.fit.transforms import data_config_for, train_transform

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "train_f1", "val_loss", "val_acc", "val_f1", "lr",
                  "seconds", "images_per_s", "data_wait_s"]


class EpochLog(Callback):
    """Per epoch: log its seconds, images/s, learning rate and ``data_wait_s``; turn Lightning's
    CSVLogger file into history.csv (one row per epoch) and print each finished epoch's line.

    ``data_wait_s`` is the time between one training step's end (or the epoch's start) and the next
    step's start: the loader handing over the next batch, plus Lightning's bookkeeping. Measured
    inside the run, it says how much the data pipeline costs against the steps themselves, which a
    comparison of separate runs cannot on shared cores (repeats of one run varied by up to 25% here). On
    a GPU the steps run asynchronously, so there it is an upper bound.

    Lightning writes an epoch's training metrics after the epoch-end hooks, so an epoch is
    published when the next one starts, and the last at the end of training.
    """

    def __init__(self, path: Path):
        self.path, self._t0, self._seen, self._printed = path, 0.0, 0, 0
        self._wait, self._last = 0.0, 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._publish(trainer)
        self._t0 = self._last = time.perf_counter()
        self._seen, self._wait = 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._wait += time.perf_counter() - self._last

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._seen += len(batch[0])  # images of this rank (a run cut by --max-steps ends mid-epoch)
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        secs = time.perf_counter() - self._t0
        pl_module.log_dict({"seconds": secs, "images_per_s": self._seen * trainer.world_size / secs,
                            "data_wait_s": self._wait, "lr": trainer.optimizers[0].param_groups[0]["lr"]},
                           sync_dist=True)

    def on_train_end(self, trainer, pl_module):
        self._publish(trainer)

    def _publish(self, trainer) -> None:
        if not trainer.is_global_zero or trainer.logger is None:
            return
        trainer.logger.save()
        # one version folder per run segment (a resume starts a new one: CSVLogger clears a reused one)
        parts = sorted(Path(trainer.logger.root_dir).glob("version_*/metrics.csv"),
                       key=lambda p: int(p.parent.name.removeprefix("version_")))
        if not parts:
            return
        rows = history_rows(parts)
        write_csv(self.path, HISTORY_FIELDS, rows)
        for row in rows:
            if row["epoch"] > self._printed:
                print(f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f} "
                      f"F1 {row['train_f1']:.4f} | val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f} "
                      f"F1 {row['val_f1']:.4f} | lr {row['lr']:.2e} | {row['seconds']:.1f} s", file=sys.stderr,
                      flush=True)
                self._printed = row["epoch"]


def history_rows(metrics_csvs: list[Path]) -> list[dict]:
    """Lightning's metrics.csv files, oldest first (train and val logged on separate rows; a resumed
    run's epochs may repeat) -> one complete row per epoch (1-based), the latest values winning."""
    by_epoch: dict[int, dict] = {}
    for path in metrics_csvs:
        with open(path, newline="") as fh:
            for r in csv.DictReader(fh):
                if r.get("epoch"):
                    by_epoch.setdefault(int(float(r["epoch"])) + 1, {}).update(
                        {k: round(float(v), 5) for k, v in r.items() if k in HISTORY_FIELDS[1:] and v != ""})
    # a run without validation images has no val_* columns: they stay empty (NaN)
    # data_wait_s is not required: a run resumed from one made before it was logged keeps its epochs
    need = {f for f in HISTORY_FIELDS[1:] if not f.startswith("val_") and f != "data_wait_s"}
    return [{"epoch": e, **{f: float("nan") for f in HISTORY_FIELDS[1:]}, **row}
            for e, row in sorted(by_epoch.items()) if need <= set(row)]


RUNTIME_FIELDS = ("out", "accelerator", "devices", "num_nodes", "workers", "max_time", "precision", "data_root")


# Fields are kept at bone-marrow-7's native 250 px (or the input size, when larger) for device augmentation.
FIELD_PX = 250


def run_datasets(cfg, samples: Optional[list], data_config: dict, raw: bool = False,
                 shipped: Optional[dict] = None) -> list:
    """The training (augmented, with soft targets when distilling) and validation datasets; with
    ``raw`` both hold uint8 fields, augmented later on the device; streamed from a shard folder when
    ``samples`` is None. Validation reads its images as ``predict`` will: through the scale and focus
    settings ``shipped`` (:func:`~marrowscope.fit.checks.preprocessing_settings`), so the epoch kept is
    chosen on what users run; without them (``--no-checks``, shards) the folder ships none either."""
    soft = read_soft_targets(cfg.distill, cfg.classes) if cfg.distill else None
    val = Preprocess(data_config, shipped.get("scale"), None, shipped.get("focus")).tensor if shipped else \
        eval_transform(data_config)
    transforms = {"train": train_transform(data_config, cfg.augment), "val": val}
    size = max(FIELD_PX, cfg.img_size) if raw else None
    if samples is None:  # a shard folder, streamed
        meta = read_meta(cfg.data, cfg.classes)
        return [shard_dataset(cfg.data, sp, cfg.classes, t, size, sp == "train") if meta["images"].get(sp) else []
                for sp, t in transforms.items()]
    datasets = [CellDataset([s for s in samples if s.split == sp], cfg.classes, t, raw_size=size,
                            soft=soft if sp == "train" else None)
                for sp, t in transforms.items()]
    for ds in datasets:
        if ds.skipped:
            print(format_skipped(ds.skipped), file=sys.stderr)
    return datasets


def fit(cfg: TrainConfig) -> Path:
    """Train a classifier as ``cfg`` says and write the run folder; returns the model folder.

    With ``cfg.resume`` the run folder's saved config is used (only where and how it runs may
    change: accelerator, devices, workers, time limit, data root), and training continues from
    ``checkpoints/last.ckpt``, the end of the last finished epoch.
    """
    cfg = _resolve(cfg)
    out = Path(cfg.out)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out.mkdir(parents=True, exist_ok=True)
    samples = _samples(cfg)
    net = create_network(cfg.model, len(cfg.classes), pretrained=cfg.pretrained, init_weights=cfg.init_weights,
                         drop_rate=cfg.drop_rate)
    data_config = data_config_for(net, cfg.img_size)
    device_augment = device_augmentation(cfg, data_config, _on_gpu(cfg))
    # the preprocessing the model folder will ship, measured first so that validation goes through it
    shipped = preprocessing_settings(samples, data_config) if cfg.checks and samples is not None else None
    train_ds, val_ds = run_datasets(cfg, samples, data_config, device_augment is not None, shipped)
    module = CellClassifier(net, len(cfg.classes), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            label_smoothing=cfg.label_smoothing, mixup=cfg.mixup,
                            distill=cfg.distill_weight if cfg.distill else 0.0, device_augment=device_augment)
    has_val = len(val_ds) > 0
    choose = has_val and cfg.keep == "best"  # else no epoch is chosen: the last one is kept
    best_cb = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", save_last=True, save_top_k=1,
                              enable_version_counter=False, **({"monitor": "val_f1", "mode": "max"} if choose else {}))
    # strict=False: a run cut by --max-steps inside an epoch ends before any validation
    stop = [EarlyStopping("val_f1", mode="max", patience=cfg.patience, strict=False)] if choose else []
    trainer = _trainer(cfg, [best_cb, *stop, EpochLog(out / "history.csv")], has_val)
    if trainer.is_global_zero and not cfg.resume:
        # the saved config names the data relative to the run folder, never by a machine's absolute path
        replace(cfg, data=_relative(cfg.data, out), distill=_relative(cfg.distill, out),
                data_root=_relative(cfg.data_root, out), out=".").save(out / "config_train.json")
        if samples is not None:  # shards: their own marrowscope_shards.json says what they hold
            write_manifest(samples, out / "manifest.csv")
    workers = loader_workers(cfg.workers, _on_gpu(cfg), cfg.devices)
    loader = make_loader if samples is not None else shard_loader
    # weights_only: a checkpoint is data, and loading it must not run code
    trainer.fit(module, loader(train_ds, cfg.batch_size, workers, True),
                loader(val_ds, cfg.batch_size * 2, workers, False) if has_val else None,
                ckpt_path=str(out / "checkpoints" / "last.ckpt") if cfg.resume else None, weights_only=True)
    failed = getattr(train_ds, "failed", None)
    if failed is not None and failed.value:
        print(f"{failed.value} time(s) a training image could not be read and was skipped (listed above)",
              file=sys.stderr)
    if not trainer.is_global_zero:
        return out / "model"
    return _save_best(cfg, net, best_cb, data_config, samples, len(train_ds), len(val_ds), shipped)


def _relative(path, out: Path):
    """A path as the run folder's config records it: relative to the run folder (None stays None)."""
    return None if path is None else os.path.relpath(Path(path).resolve(), out.resolve())


def _resolve(cfg: TrainConfig) -> TrainConfig:
    """The config to run: ``cfg``, or with ``resume`` the run's saved one with ``cfg``'s runtime fields."""
    out = Path(cfg.out)
    last = out / "checkpoints" / "last.ckpt"
    if cfg.resume:
        if not last.exists() or not (out / "config_train.json").exists():
            raise MarrowscopeError(f"--resume: no checkpoint to resume from at '{last}'.")
        try:  # a checkpoint is data: refuse one whose loading would run code, with a sentence
            torch.load(last, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise MarrowscopeError(f"refused to resume from '{last}': it is not a plain checkpoint and loading it "
                                   f"could run code ({type(exc).__name__}).") from None
        saved = TrainConfig.load(out / "config_train.json")
        for name in RUNTIME_FIELDS:
            setattr(saved, name, getattr(cfg, name))
        saved.data = str(out / saved.data)  # saved relative to the run folder
        saved.distill = saved.distill and str(out / saved.distill)
        saved.resume = True
        print(f"resuming '{out}' with its saved config ({saved.model}, {saved.epochs} epochs)", file=sys.stderr)
        return saved
    if last.exists():
        raise MarrowscopeError(f"'{out}' already holds a training run; pass --resume to continue it or "
                               "choose another --out.")
    return cfg


def _samples(cfg: TrainConfig) -> Optional[list]:
    """The run's samples, refusing a class without training images, or without validation images
    when the best epoch is to be chosen on them (``keep="best"``); None for a shard folder."""
    if is_shards(cfg.data):
        meta = read_meta(cfg.data, cfg.classes)
        print(f"shards '{cfg.data}': {meta['images']}", file=sys.stderr)
        if not meta["images"].get("train"):
            raise MarrowscopeError(f"the shard folder '{cfg.data}' holds no training images.")
        if cfg.distill:
            raise MarrowscopeError("--distill reads soft targets per file; train on the manifest, not on shards.")
        return None
    samples, skipped = load_samples(cfg.data, cfg.classes, val=cfg.val, test=cfg.test, seed=cfg.seed,
                                    data_root=cfg.data_root)
    if skipped:
        print(format_skipped(skipped), file=sys.stderr)
    table = count_table(samples, cfg.classes)
    need_val = cfg.keep == "best"
    empty = [c for c, row in table.items() if row["train"] == 0 or (need_val and row["val"] == 0)]
    if empty:
        raise MarrowscopeError(f"class(es) {', '.join(empty)} have no training or no validation images; "
                               f"each of {list(cfg.classes)} needs both (or pass --keep last, which chooses "
                               "no epoch on validation images).")
    print(format_table(table), file=sys.stderr)
    return samples


def _on_gpu(cfg: TrainConfig) -> bool:
    return cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())


def _trainer(cfg: TrainConfig, callbacks: list, has_val: bool = True) -> L.Trainer:
    on_gpu = _on_gpu(cfg)
    return L.Trainer(
        max_epochs=cfg.epochs, max_steps=cfg.max_steps, limit_val_batches=1.0 if has_val else 0,
        accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
        strategy="ddp" if cfg.devices * cfg.num_nodes > 1 else "auto",
        precision=cfg.precision or ("bf16-mixed" if on_gpu else "32-true"),
        deterministic=not on_gpu, max_time=cfg.max_time, num_sanity_val_steps=0,
        logger=CSVLogger(cfg.out, name="logs"), callbacks=callbacks,
        default_root_dir=cfg.out, log_every_n_steps=10,
    )


def _save_best(cfg: TrainConfig, net, best_cb: ModelCheckpoint, data_config: dict, samples: Optional[list],
               n_train: int, n_val: int, shipped: Optional[dict] = None) -> Path:
    """The best epoch's weights -> the model folder, with curves, history, config and manifest."""
    from marrowscope.report.plots import plot_history

    out = Path(cfg.out)
    best = (cfg.keep == "best" and best_cb.best_model_path) or str(out / "checkpoints" / "last.ckpt")
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    net = net.to(memory_format=torch.contiguous_format).float()
    plot_history(out / "history.csv", out / "curves.png")
    score = best_cb.best_model_score
    extra = {"trained_on": Path(cfg.data).name, "best_val_f1": None if score is None else round(float(score), 4),
             "train_images": n_train, "val_images": n_val, "tta": False,
             "recipe": {k: getattr(cfg, k) for k in ("model", "img_size", "epochs", "batch_size", "lr", "weight_decay",
                                                      "label_smoothing", "mixup", "augment", "pretrained", "seed",
                                                      "keep", "distill_weight")},
             "distilled_from": Path(cfg.distill).name if cfg.distill else None,
             "init_weights": Path(cfg.init_weights).name if cfg.init_weights else None,
             # the preprocessing validation went through (none measured: the folder has none)
             **{k: v for k, v in (shipped or {}).items() if v}}
    files = {n: out / n for n in ("history.csv", "curves.png", "config_train.json") if (out / n).exists()}
    if samples is not None:  # the model folder's own manifest, its paths relative to the model folder
        files["manifest.csv"] = write_manifest(samples, out / "manifest_model.csv.tmp", folder=out / "model")
    model_dir = save_model_folder(net, out / "model", cfg.classes, data_config, extra=extra, half=cfg.half,
                                  files=files)
    if samples is not None:
        files["manifest.csv"].unlink()
    if cfg.checks and samples is not None:  # the scale and focus were measured before training: the domain check
        fit_checks(model_dir, samples, out / "manifest.csv", cfg.data_root, only=("domain",))
    elif cfg.checks:
        print("trained on shards: the training scale, focus and domain check need the image files; fit them with "
              "`marrowscope fit-checks` on a manifest of the same images", file=sys.stderr)
    chosen = (f"best epoch val macro-F1 {extra['best_val_f1']} (validation split, {n_val} images)"
              if cfg.keep == "best" and n_val else "last epoch kept (no epoch chosen on validation images)")
    print(f"{chosen}; model folder: {model_dir}", file=sys.stderr)
    return model_dir

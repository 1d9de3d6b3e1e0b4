"""Prediction over several GPUs or nodes through the same Lightning launch as training (DDP).

Each rank runs the :class:`~marrowscope.predict.Predictor` it is handed (its decoder, transform,
backend, TTA and temperature: nothing is reloaded or re-read) on its share of the files and writes
it to ``<work>/rank<K>.csv`` (a ``BasePredictionWriter``); after a barrier, rank 0 merges the
shares in input order. For several nodes the work folder must be on a file system every node sees.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from marrowscope.errors import MarrowscopeError, Unreadable
from marrowscope.predict import Prediction, Predictor, Result
from marrowscope.scale import Scale


class _Files(Dataset):
    def __init__(self, files: Sequence[Path], predictor: Predictor):
        self.files, self.predictor = list(files), predictor

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        x = self.predictor.load(self.files[i])
        if isinstance(x, Unreadable):
            return None, i, x.reason, "", None, None
        # the scale travels as text and pixel size: Lightning cannot move a frozen dataclass between devices
        return x[0], i, "", str(x[1] or ""), x[1] and x[1].pixel_size_um, x[2]


def _collate(items):
    xs, idx, errors, scales, pixel_sizes, blurs = zip(*items)
    shape = next((x.shape for x in xs if x is not None), (3, 1, 1))
    return (torch.stack([x if x is not None else torch.zeros(shape) for x in xs]), torch.tensor(idx), list(errors),
            list(scales), list(pixel_sizes), list(blurs))


class _Ranked(L.LightningModule):
    """The Predictor inside Lightning's launch; its network (PyTorch backend) is a submodule so
    that Lightning places it on the rank's device."""

    def __init__(self, predictor: Predictor, files: Sequence[Path]):
        super().__init__()
        self.predictor, self.files = predictor, files
        self.net = predictor.net  # None with ONNX Runtime, which runs on the CPU of each rank

    def predict_step(self, batch, batch_idx):
        x, idx, errors, scales, pixel_sizes, blurs = batch
        readable = [k for k, e in enumerate(errors) if not e]
        probs, domain = np.zeros((len(x), len(self.predictor.classes))), np.full(len(x), np.nan)
        if readable:
            p = self.predictor
            logits, _, scores = p.forward(x[readable])
            again = p.read_again([self.files[int(idx[k])] for k in readable],
                                 [pixel_sizes[k] and Scale(pixel_sizes[k], scales[k]) for k in readable], scores)
            for j, k in enumerate(readable):  # the same finish as one process: views and readings averaged
                probs[k] = p.probs(logits[:, j], again[j])
            if scores is not None:
                domain[readable] = scores
        return idx.tolist(), probs, errors, scales, domain, blurs


class _RankWriter(BasePredictionWriter):
    def __init__(self, work: Path):
        super().__init__(write_interval="batch")
        self.work = work

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        with open(self.work / f"rank{trainer.global_rank}.csv", "a", newline="") as fh:
            w = csv.writer(fh)
            for i, p, err, scale, domain, blur in zip(*prediction):
                w.writerow([i, err, scale, f"{domain:.6f}", "" if blur is None else f"{blur:.6f}",
                            *(f"{v:.8f}" for v in p)] if not err else [i, err])


def predict_distributed(predictor: Predictor, files: Sequence[Path], work: Path, *, devices: int = 1,
                        num_nodes: int = 1, accelerator: str = "auto", batch_size: int = 32, workers: int = 2,
                        ) -> Optional[list[Result]]:
    """``predictor``'s results for ``files`` in input order on global rank 0; None on the others."""
    work.mkdir(parents=True, exist_ok=True)
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, logger=False,
                        strategy="ddp" if devices * num_nodes > 1 else "auto", callbacks=[_RankWriter(work)],
                        enable_model_summary=False, precision="32-true")
    for old in work.glob(f"rank{trainer.global_rank}.csv"):
        old.unlink()
    loader = DataLoader(_Files(files, predictor), batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    trainer.predict(_Ranked(predictor, files), loader, return_predictions=False)
    trainer.strategy.barrier()
    if trainer.global_rank != 0:
        return None
    got: dict[int, Result] = {}
    for part in sorted(work.glob("rank*.csv")):
        with open(part, newline="") as fh:
            for row in csv.reader(fh):  # the sampler may repeat a few items to even out ranks
                i = int(row[0])
                got[i] = Unreadable(files[i], row[1]) if row[1] else Prediction(
                    str(files[i]), np.array([float(v) for v in row[5:]]), row[2] or None,
                    None if row[3] == "nan" else float(row[3]), float(row[4]) if row[4] else None)
    shutil.rmtree(work, ignore_errors=True)  # every rank has passed the barrier: the shares are merged
    missing = [str(files[i]) for i in range(len(files)) if i not in got]
    if missing:
        raise MarrowscopeError(f"{len(missing)} file(s) got no prediction from any rank (first: {missing[0]}); "
                               f"is '{work}' on a file system that every node sees?")
    return [got[i] for i in range(len(files))]

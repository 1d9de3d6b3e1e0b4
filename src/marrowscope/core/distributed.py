"""Prediction over several GPUs or nodes through the same Lightning launch as training (DDP).

Each rank runs the :class:`~marrowscope.core.predict.Predictor` it is handed (its decoder, transform,
backend, TTA, temperature and policy: nothing is reloaded or re-read) on its share of the files,
through the same :meth:`~marrowscope.core.predict.Predictor.load`, ``infer`` and ``finish`` as one
process, so each rank holds whole :class:`~marrowscope.core.predict.Prediction` results. Rank 0
gathers them (``all_gather_object``) and puts them in input order; nothing goes through a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from marrowscope.core.errors import MarrowscopeError, Unreadable
from marrowscope.core.partial import PartialFile
from marrowscope.core.predict import Predictor, Result


class _Held:
    """What travels beside the tensors untouched. A plain object on purpose: Lightning moves batches
    and predictions between devices by rebuilding their containers and dataclasses, and a frozen
    :class:`~marrowscope.core.scale.Scale` (in a batch, and in every Prediction) cannot be rebuilt;
    plain objects pass as they are."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class _Files(Dataset):
    def __init__(self, files: Sequence[Path], predictor: Predictor):
        self.files, self.predictor = list(files), predictor

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        x = self.predictor.load(self.files[i])
        return (None, i, x) if isinstance(x, Unreadable) else (x[0], i, _Held(x[1:]))  # scale, blur


def _collate(items):
    """A numpy batch: Lightning moves only tensors to the rank's device, and the Predictor moves its input
    to its backend's device itself, so the images are not copied there and back."""
    xs, idx, held = zip(*items)
    shape = next((x.shape for x in xs if x is not None), (3, 1, 1))
    return np.stack([x if x is not None else np.zeros(shape, np.float32) for x in xs]), list(idx), list(held)


class _Ranked(L.LightningModule):
    """The Predictor inside Lightning's launch; its network (PyTorch backend) is a submodule so
    that Lightning places it on the rank's device."""

    def __init__(self, predictor: Predictor, files: Sequence[Path], keep: Optional[PartialFile] = None):
        super().__init__()
        self.predictor, self.files, self.keep = predictor, files, keep
        self.net = predictor.net  # None with ONNX Runtime, which runs on the CPU of each rank

    def predict_step(self, batch, batch_idx) -> _Held:
        """The batch's (index, result) pairs, held."""
        x, idx, held = batch
        p = self.predictor
        ok = [k for k, h in enumerate(held) if isinstance(h, _Held)]
        files = [self.files[idx[k]] for k in ok]
        raws = p.infer(files, [str(f) for f in files], [(x[k], *held[k].value) for k in ok]) if ok else []
        done = dict(zip(ok, map(p.finish, raws)))
        results = [(i, done.get(k, held[k])) for k, i in enumerate(idx)]
        if self.keep is not None:  # each rank keeps its own finished results as they are made
            for _, r in results:
                self.keep.add(r)
        return _Held(results)


def predict_distributed(predictor: Predictor, files: Sequence[Path], *, devices: int = 1, num_nodes: int = 1,
                        accelerator: str = "auto", batch_size: int = 32, workers: int = 2,
                        keep: Optional[PartialFile] = None) -> Optional[list[Result]]:
    """``predictor``'s results for ``files`` in input order on global rank 0; None on the others. With
    ``keep``, each rank appends its results to its own partial file (``OUT.partial.rankK``)."""
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, logger=False,
                        strategy="ddp" if devices * num_nodes > 1 else "auto", enable_model_summary=False,
                        enable_progress_bar=False, precision="32-true")
    loader = DataLoader(_Files(files, predictor), batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    ranked = _Ranked(predictor, files, keep.for_rank(trainer.global_rank) if keep is not None else None)
    try:
        mine = [item for part in trainer.predict(ranked, loader) for item in part.value]
    finally:
        if ranked.keep is not None:
            ranked.keep.close()
    shares = [mine]
    if dist.is_available() and dist.is_initialized():
        shares = [None] * dist.get_world_size()
        dist.all_gather_object(shares, mine)
        # every rank now holds what it needs. A group left to the interpreter's exit can abort the process
        # (gloo's threads, "terminate called without an active exception"; seen once in CI, rank 1 and 0
        # both exiting -6): PyTorch asks for this call once communication is over (pytorch/pytorch#190489)
        dist.destroy_process_group()
    if trainer.global_rank != 0:
        return None
    got = dict(item for share in shares for item in share)  # the sampler may repeat a few items to even out ranks
    missing = [str(files[i]) for i in range(len(files)) if i not in got]
    if missing:
        raise MarrowscopeError(f"{len(missing)} file(s) got no prediction from any rank (first: {missing[0]}).")
    return [got[i] for i in range(len(files))]

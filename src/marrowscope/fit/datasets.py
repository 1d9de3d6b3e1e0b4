"""Training datasets: labelled cell images for the loader, in memory or decoded per item, and the
datasets of a training run (files or streamed shards, augmented on the CPU or on the device).

A set whose decoded images fit in ``CACHE_BUDGET_BYTES`` is decoded once and kept in memory; a larger
one is decoded per item in the DataLoader's workers, so memory does not grow with the set.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from marrowscope.core.data import Sample
from marrowscope.core.errors import ImageDecodeError, MarrowscopeError, Unreadable
from marrowscope.core.images import decode_image
from marrowscope.fit.augment import focus_settings
from marrowscope.fit.augment_batch import BatchLabAugment

# Decoded images are kept in memory while they fit in this budget (bone-marrow-7: 3,500 x 187.5 KB =
# 0.66 GB); a larger set is decoded per item in the loader's workers, so memory does not grow with it.
CACHE_BUDGET_BYTES = 1_500_000_000


class CellDataset(Dataset):
    """Labelled cell images: decoded once into memory when they fit (``CACHE_BUDGET_BYTES``), else
    decoded per item in the DataLoader's workers.

    Decoding once keeps the CPU for augmentation and the model: JPEG decoding per epoch would
    otherwise rival a small network's forward pass. In memory, files that fail to decode are left
    out and listed in ``skipped``; decoded per item, a file that vanished or broke is reported on
    stderr, counted in ``failed`` and replaced by the next readable item, and training goes on.

    With ``raw_size`` S an item is the whole field as uint8 [3, S, S] (the centre square, resized
    once), for augmentation of whole batches on the device (:mod:`marrowscope.fit.augment_batch`);
    otherwise ``transform`` makes it a tensor. With ``soft`` ({sample.rel: probabilities}), an item
    also carries its soft target (distillation). ``decode_threads`` (default: one per core) decode
    the in-memory cache.
    """

    def __init__(self, samples: Sequence[Sample], classes: Sequence[str], transform: Optional[Callable],
                 raw_size: Optional[int] = None, soft: Optional[dict] = None, cache: Optional[bool] = None,
                 decode_threads: Optional[int] = None):
        import multiprocessing

        self.classes = list(classes)
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted({s.label for s in samples} - set(index))
        if unknown:
            raise MarrowscopeError(f"labels {unknown} are not among the model's classes {self.classes}.")
        self.transform, self.raw_size = transform, raw_size
        self.cache = cache if cache is not None else len(samples) * _item_bytes(samples, raw_size) <= \
            CACHE_BUDGET_BYTES
        self.failed = multiprocessing.Value("i", 0)  # shared with the loader's worker processes
        if self.cache:
            with ThreadPoolExecutor(decode_threads or os.cpu_count() or 1) as pool:  # PIL decodes without the GIL
                loaded = list(pool.map(self._decode, samples))
            self.samples = [s for s, x in zip(samples, loaded) if not isinstance(x, str)]
            self.images = [x for x in loaded if not isinstance(x, str)]
            self.skipped = [Unreadable(s.path, x) for s, x in zip(samples, loaded) if isinstance(x, str)]
        else:
            self.samples, self.images, self.skipped = list(samples), None, []
        self.targets = torch.tensor([index[s.label] for s in self.samples], dtype=torch.long)
        self.soft = None
        if soft is not None:
            missing = [s.rel for s in self.samples if s.rel not in soft]
            if missing:
                raise MarrowscopeError(f"the soft targets lack {len(missing)} training image(s), e.g. '{missing[0]}'.")
            self.soft = torch.tensor(np.stack([soft[s.rel] for s in self.samples]), dtype=torch.float32)

    def _decode(self, s: Sample):
        """The item's pixels (an array, or a uint8 field with ``raw_size``), or why it cannot be read."""
        try:
            im = decode_image(s.path)
        except ImageDecodeError as exc:
            return str(exc)
        return _square(im, self.raw_size) if self.raw_size else np.asarray(im)

    def __getstate__(self):
        # forked workers share the counter; a pickled copy (spawned workers) cannot, and only reports
        return {**self.__dict__, "failed": None}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        for k in range(len(self)):  # decoded per item: step over files that vanished or broke mid-run
            j = (i + k) % len(self)
            pixels = self.images[j] if self.cache else self._decode(self.samples[j])
            if not isinstance(pixels, str):
                break
            if self.failed is not None:
                with self.failed.get_lock():
                    self.failed.value += 1
            print(f"skipped {self.samples[j].path}: {pixels}", file=sys.stderr, flush=True)
        else:
            raise MarrowscopeError("none of the training images can be read any more.")
        x = pixels if self.raw_size else self.transform(Image.fromarray(pixels))
        return (x, self.targets[j]) if self.soft is None else (x, self.targets[j], self.soft[j])


def _item_bytes(samples: Sequence[Sample], raw_size: Optional[int]) -> int:
    """Memory of one decoded item, from the first readable image (250 x 250 RGB when none is)."""
    if raw_size:
        return raw_size * raw_size * 3
    for s in samples[:5]:
        try:
            w, h = decode_image(s.path).size
            return w * h * 3
        except ImageDecodeError:
            continue
    return 250 * 250 * 3


def _square(im, size: int) -> torch.Tensor:
    """PIL image -> uint8 [3, size, size]: its centre square (what the eval transform keeps), resized."""
    from PIL import Image

    w, h = im.size
    side = min(w, h)
    if (w, h) != (side, side):
        im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    if side != size:
        im = im.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).contiguous()


def read_soft_targets(path: str | Path, classes: Sequence[str]) -> dict[str, np.ndarray]:
    """{class-folder path (``BLA/x.jpg``): probabilities in ``classes`` order} from a CSV with a
    ``path`` column and one ``p_<class>`` column per class (``marrowscope cv``'s oof.csv)."""
    import csv

    cols = [f"p_{c}" for c in classes]
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise MarrowscopeError(f"cannot read the soft targets '{path}' ({exc}).") from None
    if not rows or not {"path", *cols} <= set(rows[0]):
        raise MarrowscopeError(f"'{path}' is not a table of soft targets: it needs the columns path and "
                               f"{', '.join(cols)}.")
    out = {}
    for r in rows:
        p = np.array([float(r[c]) for c in cols], dtype=np.float32)
        out[r["path"]] = p / p.sum()
    return out


def collate_readable(items: list):
    """Default collation of the items that could be read (None marks one that could not); None when
    no item of the batch could be read (the training step then skips it)."""
    from torch.utils.data import default_collate

    items = [x for x in items if x is not None]
    return default_collate(items) if items else None


def loader_workers(requested: Optional[int], on_gpu: bool, processes_per_node: int = 1) -> int:
    """Loader worker processes per training process: ``requested``, else none on the CPU and up to 8
    on a GPU.

    On the CPU the training step already keeps every core busy with its own threads, so a worker
    process only takes turns with it, and each forked worker adds to the run's memory. Measured on
    2 cores (Lite0, 224 px, batch 16; ``bench/train_scale.py``): peak RSS of the process tree 2.6 GB
    at 17,000-30,000 images and 2.7 GB at 170,000 without workers, 3.8 GB with two; images/s within
    the machine's run-to-run spread either way (8.6 vs 9.4 in one pair of runs, 10.9 vs 8.3 in another).
    On a GPU the cores are free to decode and augment. ``processes_per_node`` -1 (Lightning's "every
    GPU") counts the GPUs.
    """
    if requested is not None:
        return requested
    if not on_gpu:
        return 0
    if processes_per_node < 1:
        processes_per_node = max(1, torch.cuda.device_count())
    return max(1, min(8, (os.cpu_count() or 1) // processes_per_node))


def make_loader(ds: Dataset, batch_size: int, workers: int, shuffle: bool) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      drop_last=shuffle and len(ds) > batch_size, persistent_workers=workers > 0,
                      pin_memory=torch.cuda.is_available())


# ---------------------------------------------------------------- the datasets of a training run
def device_augmentation(cfg, data_config: dict, on_gpu: bool):
    """The batched ``lab`` recipe when it is to run on the device (a GPU by default), else None."""
    if cfg.augment_on not in ("auto", "cpu", "device"):
        raise MarrowscopeError(f"--augment-on must be auto, cpu or device, not '{cfg.augment_on}'.")
    on_device = cfg.augment_on == "device" or (cfg.augment_on == "auto" and on_gpu)
    if not on_device:
        return None
    if cfg.augment == "light" and cfg.augment_on == "device":
        raise MarrowscopeError("augmentation on the device implements the 'lab' recipes; pass --augment lab "
                               "or lab-sharp (or --augment-on cpu).")
    if cfg.augment == "light":  # the light recipe stays on the CPU, where it is cheap
        return None
    focus = focus_settings(cfg.augment == "lab-sharp")
    return BatchLabAugment(cfg.img_size, data_config["mean"], data_config["std"], amount=focus["amount"],
                           p_focus_jpeg=focus["p"])

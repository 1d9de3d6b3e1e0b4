"""Packed shards for sets of any size and for many nodes: Lightning's LitData (``optimize`` to write,
``StreamingDataset`` to read; each DDP rank and loader worker streams its own chunks).

    marrowscope prepare SRC --out manifest.csv --shards DIR    # DIR/train, DIR/val, DIR/test + marrowscope_shards.json
    marrowscope train DIR --out runs/NAME ...                  # streams; each DDP rank reads its own chunks

Each item holds the image file's own bytes (no re-encoding), its class index and its class-folder path;
the one decoder (:mod:`marrowscope.core.images`) reads them in the loader's workers, so memory stays flat
whatever the set's size. ``marrowscope_shards.json`` records the format and the class list: a folder
written by another format, or for other classes, is refused with a sentence.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from marrowscope.core.errors import ImageDecodeError, MarrowscopeError
from marrowscope.core.images import decode_image
from marrowscope.fit.datasets import _square, collate_readable

FORMAT = 1
META = "marrowscope_shards.json"


def _litdata():
    try:
        import litdata
    except ImportError:
        raise MarrowscopeError("shards need LitData: pip install 'marrowscope[scale]' (or pip install litdata).") \
            from None
    return litdata


def _pack(item: tuple[str, int, str]) -> dict:
    path, label, rel = item
    return {"image": Path(path).read_bytes(), "label": label, "rel": rel}


def write_shards(samples: Sequence, classes: Sequence[str], out: str | Path, workers: int = 1) -> dict:
    """One LitData dataset per split under ``out``; returns (and writes) the metadata."""
    optimize = _litdata().optimize
    out, index = Path(out), {c: i for i, c in enumerate(classes)}
    counts = {}
    for split in ("train", "val", "test"):
        items = [(str(s.path), index[s.label], s.rel) for s in samples if s.split == split]
        if items:
            optimize(fn=_pack, inputs=items, output_dir=str(out / split), chunk_bytes="64MB", num_workers=workers,
                     mode="overwrite", verbose=False)
        counts[split] = len(items)
    meta = {"format": FORMAT, "classes": list(classes), "images": counts}
    (out / META).write_text(json.dumps(meta, indent=2))
    return meta


def is_shards(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / META).is_file()


def read_meta(path: str | Path, classes: Optional[Sequence[str]] = None) -> dict:
    """The shard folder's metadata, refusing another format or classes outside ``classes``."""
    try:
        meta = json.loads((Path(path) / META).read_text())
    except (OSError, ValueError) as exc:
        raise MarrowscopeError(f"'{path}' is not a marrowscope shard folder ({exc}).") from None
    if meta.get("format") != FORMAT:
        raise MarrowscopeError(f"the shard folder '{path}' was written by another version of marrowscope (format "
                               f"{meta.get('format')}; this one reads format {FORMAT}); write it again with "
                               "`marrowscope prepare SRC --out manifest.csv --shards DIR`.")
    if classes is not None and not set(meta["classes"]) <= set(classes):
        raise MarrowscopeError(f"the shard folder '{path}' holds classes {sorted(set(meta['classes']) - set(classes))} "
                               f"that are not in --classes {list(classes)}.")
    return meta


def shard_dataset(path: str | Path, split: str, classes: Sequence[str], transform: Optional[Callable],
                  raw_size: Optional[int], shuffle: bool):
    """A StreamingDataset of one split whose items are decoded like CellDataset's (None: unreadable)."""
    meta = read_meta(path, classes)
    remap = [list(classes).index(c) for c in meta["classes"]]  # the shard's class indices -> the run's
    ds = __getattr__("ShardCells")(str(Path(path) / split), shuffle=shuffle, drop_last=shuffle)
    ds.remap, ds.cell_transform, ds.raw_size = remap, transform, raw_size  # "transform" is LitData's own
    return ds


def _shard_cells_class():
    """The StreamingDataset subclass, made on first use so that importing marrowscope does not import
    LitData; reachable as ``marrowscope.fit.shards.ShardCells`` so that loader workers can unpickle it."""
    StreamingDataset = _litdata().StreamingDataset

    class ShardCells(StreamingDataset):
        remap: list = []
        cell_transform: Optional[Callable] = None
        raw_size: Optional[int] = None

        def __getitem__(self, index):
            item = super().__getitem__(index)
            try:
                im = decode_image(bytes(item["image"]))
            except ImageDecodeError as exc:
                print(f"skipped {item['rel']}: {exc}", file=sys.stderr, flush=True)
                return None  # dropped by the loader's collate
            x = _square(im, self.raw_size) if self.raw_size else self.cell_transform(im)
            return x, self.remap[item["label"]]

    ShardCells.__module__, ShardCells.__qualname__ = __name__, "ShardCells"
    return ShardCells


def __getattr__(name: str):
    if name == "ShardCells":
        return globals().setdefault(name, _shard_cells_class())
    raise AttributeError(name)


def shard_loader(ds, batch_size: int, workers: int, shuffle: bool = False):
    """LitData's loader (it moves the stream on by one epoch each pass), dropping unreadable items; the
    signature is make_loader's, but ``shuffle`` is the dataset's own (set by :func:`shard_dataset`)."""
    return _litdata().StreamingDataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_readable)

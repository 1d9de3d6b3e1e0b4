"""Manifests: plain CSV files (path, label, split, sha256) that name a dataset's images and split.

A manifest records no machine's absolute path, so one committed beside a model reads the same on
every machine. Its paths are relative to the manifest's own folder (``..`` where the images lie
elsewhere), so it works where it is written. When the images have moved, ``--data-root DIR``
names the folder that now holds the class folders: each path from its class folder on (``BLA/x.jpg``)
is read under DIR. A manifest whose images are not beside it falls back to the default data folder
(``../shared/data/bone-marrow-7``) in the same way.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from marrowscope.core.csvfiles import write_csv
from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.samples import SPLITS, Sample, default_data_dir

COLUMNS = ("path", "label", "split", "sha256")


def write_manifest(samples: Sequence[Sample], path: str | Path, folder: Optional[str | Path] = None) -> Path:
    """Write a manifest whose paths are relative to its own folder (or to ``folder``, where it will
    be moved to)."""
    folder = Path(folder or Path(path).parent).resolve()
    rows = [[Path(os.path.relpath(Path(s.path).resolve(), folder)).as_posix(), s.label, s.split, s.sha256]
            for s in samples]
    return write_csv(path, COLUMNS, rows)


def class_path(path: str, label: str) -> str:
    """A manifest path from its class folder on: ``../../data/BLA/0001/x.jpg`` -> ``BLA/0001/x.jpg``."""
    parts = Path(path).parts
    idx = max((i for i, p in enumerate(parts[:-1]) if p == label), default=None)
    return "/".join(parts[idx:]) if idx is not None else Path(path).name


def manifest_rows(path: str | Path) -> list[dict]:
    """A manifest's rows, paths as written. Lines starting with ``#`` (the root line that manifests
    of marrowscope 0.1 began with) are passed over."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MarrowscopeError(f"cannot read manifest '{path}' ({exc}).") from None
    if not rows or not {"path", "label", "split"} <= set(rows[0]):
        raise MarrowscopeError(f"'{path}' is not a marrowscope manifest (expected columns {', '.join(COLUMNS)}).")
    return rows


def read_manifest(path: str | Path, data_root: Optional[str | Path] = None) -> list[Sample]:
    """The samples of a manifest, their paths resolved as the module's docstring says."""
    path, rows = Path(path), manifest_rows(path)
    bad_splits = {r["split"] for r in rows} - set(SPLITS)
    if bad_splits:
        raise MarrowscopeError(f"manifest '{path}' has unknown split(s) {sorted(bad_splits)}; expected {SPLITS}.")
    tails = [class_path(r["path"], r["label"]) for r in rows]
    if data_root:
        if not (Path(data_root) / tails[0]).exists():
            raise MarrowscopeError(f"--data-root '{data_root}' does not hold the images of manifest '{path}' "
                                   f"(looked for '{Path(data_root) / tails[0]}'); pass the folder that holds the "
                                   "class folders.")
        files = [Path(data_root) / t for t in tails]
    elif (path.parent / rows[0]["path"]).exists():
        files = [Path(os.path.normpath(path.parent / r["path"])) for r in rows]
    elif default_data_dir() is not None and (default_data_dir() / tails[0]).exists():
        print(f"manifest '{path}': images read from {default_data_dir()}", file=sys.stderr)
        files = [default_data_dir() / t for t in tails]
    else:
        raise MarrowscopeError(f"the images of manifest '{path}' are neither where it says ('{rows[0]['path']}') "
                               "nor in the default data folder; pass --data-root with the folder that now holds "
                               "the class folders.")
    return [Sample(f, r["label"], r["split"], r.get("sha256", ""), rel=t) for f, r, t in zip(files, rows, tails)]

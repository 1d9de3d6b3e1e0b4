"""Reviewed labels -> a training set: class folders plus ``labels.csv``, zipped.

Every cell keeps its identity: it is found by its row in the batch (never by its file name, which
two uploads often share: ``u1/cell.jpg``, ``u2/cell.jpg``), written under a unique name, and
listed with the sha256 of its own bytes. ``marrowscope train`` accepts the unzipped folder or its
``labels.csv``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from marrowscope.core.config import TEST_FRACTION, VAL_FRACTION
from marrowscope.core.csvfiles import write_csv
from marrowscope.core.data import Sample, split_samples
from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.manifest import COLUMNS


def export_review(classes: Sequence[str], rows: Sequence[Sequence], cells: Sequence[tuple[str, str]],
                  out_dir: Path) -> tuple[Path, Path, int]:
    """Write ``out_dir/reviewed.zip`` and ``out_dir/reviewed/labels.csv``.

    Args:
        rows: the review table as edited: [file, predicted, probability, label] per cell.
        cells: (shown name, file path) of each classified cell, in the table's order.

    Returns:
        the zip, the labels CSV and the number of cells exported.
    """
    if len(rows) != len(cells) or any(str(r[0]) != name for r, (name, _) in zip(rows, cells)):
        raise MarrowscopeError("the review table no longer matches the last batch (rows were added or removed); "
                               "classify the batch again.")
    labels = [str(r[3]).strip().upper() for r in rows]
    bad = [f"{r[0]}: '{r[3]}' is not one of {', '.join(classes)}" for r, lab in zip(rows, labels) if lab not in classes]
    if bad:
        raise MarrowscopeError("Fix these labels first: " + "; ".join(bad[:5]))
    tree = out_dir / "reviewed"
    shutil.rmtree(tree, ignore_errors=True)
    samples = []
    for k, ((name, src), label) in enumerate(zip(cells, labels)):
        target = tree / label / f"{k:05d}_{Path(name).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        samples.append(Sample(target, label))
    split_samples(samples, val=VAL_FRACTION, test=TEST_FRACTION, seed=0)  # fills each file's sha256
    labels_csv = write_csv(tree / "labels.csv", COLUMNS,
                           ([s.path.relative_to(tree).as_posix(), s.label, s.split, s.sha256] for s in samples))
    archive = Path(shutil.make_archive(str(out_dir / "reviewed"), "zip", tree))
    return archive, labels_csv, len(samples)

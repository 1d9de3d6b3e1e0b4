"""Datasets as users have them: class folders, manifests, splits (the loader's datasets:
:mod:`marrowscope.fit.datasets`).

A dataset is either a folder with one sub-folder per class (flat, ``BLA/BLA_00001.jpg``, or
nested, ``BLA/0001-1000/BLA_00001.jpg``) or a manifest CSV written by ``marrowscope prepare``
(columns path, label, split, sha256; see :mod:`marrowscope.core.manifest` for where its paths start).
Splits are stratified per class and seeded; byte-identical files share one split.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

from marrowscope.core.config import TEST_FRACTION, VAL_FRACTION
from marrowscope.core.errors import ImageDecodeError, MarrowscopeError, Unreadable
from marrowscope.core.images import decode_image, is_image_path
from marrowscope.core.manifest import read_manifest
from marrowscope.core.samples import DEFAULT_DATA_NAME, SPLIT_CHOICES, SPLITS, Sample, data_or_default, default_data_dir  # noqa: F401


def scan_folder(root: str | Path, classes: Optional[Sequence[str]] = None) -> tuple[list[Sample], list[Unreadable]]:
    """Find the images of each class folder under ``root`` (any depth below the class folder).

    Raises:
        MarrowscopeError: root is not a folder, a requested class has no folder, or no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise MarrowscopeError(f"dataset folder '{root}' does not exist or is not a folder.")
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    wanted = list(classes) if classes else present
    missing = [c for c in wanted if c not in present]
    if missing:
        raise MarrowscopeError(
            f"class folder(s) {', '.join(missing)} not found in '{root}' (found: {', '.join(present) or 'none'})."
        )
    samples, skipped = [], []
    for label in wanted:
        files = sorted(p for p in (root / label).rglob("*") if p.is_file())
        images = [p for p in files if is_image_path(p)]
        skipped += [Unreadable(p, "not an image file (by its extension)") for p in files
                     if p not in set(images) and not p.name.startswith(".")]
        if not images:
            raise MarrowscopeError(f"class folder '{root / label}' holds no images.")
        samples += [Sample(p, label, rel=p.relative_to(root).as_posix()) for p in images]
    return samples, skipped


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_decodes(samples: list[Sample], workers: int = 4) -> tuple[list[Sample], list[Unreadable]]:
    def check(s: Sample) -> Optional[str]:
        try:
            decode_image(s.path)
        except ImageDecodeError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(workers) as pool:
        reasons = list(pool.map(check, samples))
    good = [s for s, r in zip(samples, reasons) if r is None]
    bad = [Unreadable(s.path, r) for s, r in zip(samples, reasons) if r is not None]
    return good, bad


def split_samples(samples: list[Sample], val: float, test: float, seed: int) -> list[Sample]:
    """Stratified, seeded train/val/test split in which byte-identical files stay together."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise MarrowscopeError(f"--val {val} and --test {test} must be fractions that sum to less than 1.")
    with ThreadPoolExecutor(4) as pool:
        for s, digest in zip(samples, pool.map(lambda s: s.sha256 or sha256_of(s.path), samples)):
            s.sha256 = digest
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.sha256].append(s)
    by_label: dict[str, list[str]] = defaultdict(list)
    for digest, members in groups.items():
        by_label[members[0].label].append(digest)
    rng = random.Random(seed)
    for label in sorted(by_label):
        digests = sorted(by_label[label])
        rng.shuffle(digests)
        n = len(digests)
        n_test = _share(n, test)
        n_val = _share(n - n_test, val / (1 - test) if test < 1 else 0)
        for k, digest in enumerate(digests):
            split = "test" if k < n_test else "val" if k < n_test + n_val else "train"
            for s in groups[digest]:
                s.split = split
    return samples


def assign_folds(samples: list[Sample], k: int, seed: int) -> list[int]:
    """A fold (0..k-1) per sample for k-fold cross-validation: stratified per class, seeded, and
    byte-identical files in one fold (so no image is ever both trained on and held out)."""
    if k < 2:
        raise MarrowscopeError(f"--folds {k}: cross-validation needs at least 2 folds.")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s.sha256 or sha256_of(s.path)].append(i)
    by_label: dict[str, list[str]] = defaultdict(list)
    for digest, members in groups.items():
        by_label[samples[members[0]].label].append(digest)
    small = sorted(label for label, d in by_label.items() if len(d) < k)
    if small:
        raise MarrowscopeError(f"class(es) {', '.join(small)} have fewer than {k} distinct images; "
                               f"{k}-fold cross-validation needs at least one per fold.")
    rng, folds, offset = random.Random(seed), [0] * len(samples), 0
    for label in sorted(by_label):
        digests = sorted(by_label[label])
        rng.shuffle(digests)
        for j, digest in enumerate(digests):
            for i in groups[digest]:
                folds[i] = (j + offset) % k
        offset += len(digests)  # the next class starts where this one ended: folds stay even in size
    return folds


def _share(n: int, frac: float) -> int:
    """round(n * frac), but at least one when the fraction is asked for and n allows it."""
    k = int(round(n * frac))
    return max(k, 1) if frac > 0 and n >= 3 else k


def prepare(src: str | Path, classes: Optional[Sequence[str]] = None, per_class: Optional[int] = None,
            val: float = VAL_FRACTION, test: float = TEST_FRACTION, seed: int = 0
            ) -> tuple[list[Sample], list[Unreadable]]:
    """Scan, sample up to ``per_class`` images per class (seeded), verify they decode, and split."""
    samples, skipped = scan_folder(src, classes)
    if per_class:
        rng = random.Random(seed)
        by_label = defaultdict(list)
        for s in samples:
            by_label[s.label].append(s)
        samples = [s for label in by_label for s in
                   (rng.sample(by_label[label], per_class) if len(by_label[label]) > per_class else by_label[label])]
    samples, bad = _check_decodes(samples)
    return split_samples(samples, val, test, seed), skipped + bad


def duplicate_groups(samples: Sequence[Sample]) -> int:
    """How many files have a byte-identical twin elsewhere in the set."""
    counts = Counter(s.sha256 for s in samples if s.sha256)
    return sum(c for c in counts.values() if c > 1)


def load_samples(data: str | Path, classes: Optional[Sequence[str]] = None, *, val: float = VAL_FRACTION,
                 test: float = TEST_FRACTION, seed: int = 0, data_root: Optional[str | Path] = None
                 ) -> tuple[list[Sample], list[Unreadable]]:
    """Samples of a manifest CSV, or of a class-folder tree split on the fly (seeded)."""
    data = Path(data)
    if data.is_file():
        samples = read_manifest(data, data_root)
        if classes:
            unknown = sorted({s.label for s in samples} - set(classes))
            if unknown:
                raise MarrowscopeError(f"manifest '{data}' has labels {unknown} outside the classes {list(classes)}.")
        return samples, []
    return prepare(data, classes, None, val, test, seed)


def count_table(samples: Sequence[Sample], classes: Sequence[str]) -> dict[str, dict[str, int]]:
    """{class: {split: count, ..., "total": n}} for every class, zeros included."""
    table = {c: {**{sp: 0 for sp in SPLITS}, "total": 0} for c in classes}
    for s in samples:
        row = table.setdefault(s.label, {**{sp: 0 for sp in SPLITS}, "total": 0})
        if s.split in row:
            row[s.split] += 1
        row["total"] += 1
    return table


def format_table(table: dict[str, dict[str, int]]) -> str:
    cols = [c for c in (*SPLITS, "total") if any(r.get(c) for r in table.values())] or ["total"]
    lines = ["class  " + "".join(f"{c:>8}" for c in cols)]
    for label, row in table.items():
        lines.append(f"{label:<7}" + "".join(f"{row.get(c, 0):>8}" for c in cols))
    totals = {c: sum(r.get(c, 0) for r in table.values()) for c in cols}
    lines.append("all    " + "".join(f"{totals[c]:>8}" for c in cols))
    return "\n".join(lines)


def format_skipped(skipped: Sequence[Unreadable], limit: int = 10) -> str:
    head = f"{len(skipped)} file(s) skipped:"
    rows = [f"  {s.source}: {s.reason}" for s in skipped[:limit]]
    more = [f"  ... and {len(skipped) - limit} more"] if len(skipped) > limit else []
    return "\n".join([head, *rows, *more])

"""Dataset scans, splits, manifests."""

import csv
import shutil
from collections import Counter
from pathlib import Path

import pytest

from marrowscope.core.classes import CLASSES
from marrowscope.core.data import count_table, load_samples, prepare, scan_folder
from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.manifest import manifest_rows, read_manifest, write_manifest
from tests.conftest import make_dataset


def test_flat_and_nested_layouts(tmp_path):
    flat = make_dataset(tmp_path / "flat", per_class=3)
    nested = make_dataset(tmp_path / "nested", per_class=3, nested=True)
    for root in (flat, nested):
        samples, skipped = scan_folder(root, CLASSES)
        assert Counter(s.label for s in samples) == {c: 3 for c in CLASSES}
        assert skipped == []


def test_unasked_classes_ignored_missing_class_named(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=2, classes=("BLA", "EOS", "XYZ"))
    samples, _ = scan_folder(root, ("BLA", "EOS"))
    assert {s.label for s in samples} == {"BLA", "EOS"}
    with pytest.raises(MarrowscopeError, match="LYT"):
        scan_folder(root, ("BLA", "LYT"))


def test_empty_class_folder_is_an_error(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=2, classes=("BLA",))
    (root / "EOS").mkdir()
    with pytest.raises(MarrowscopeError, match="EOS.*holds no images"):
        scan_folder(root, ("BLA", "EOS"))


def test_non_images_and_corrupt_files_are_reported(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=6, classes=("BLA", "EOS"))
    (root / "BLA" / "notes.txt").write_text("x")
    (root / "EOS" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    samples, skipped = prepare(root, ("BLA", "EOS"))
    reasons = {Path(p.source).name: p.reason for p in skipped}
    assert "not an image file" in reasons["notes.txt"]
    assert "not an image format" in reasons["broken.jpg"]
    assert len(samples) == 12


def test_split_is_stratified_seeded_and_sampled(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=20)
    a, _ = prepare(root, CLASSES, per_class=10, val=0.2, test=0.2, seed=3)
    b, _ = prepare(root, CLASSES, per_class=10, val=0.2, test=0.2, seed=3)
    c, _ = prepare(root, CLASSES, per_class=10, val=0.2, test=0.2, seed=4)
    table = count_table(a, CLASSES)
    assert all(row == {"train": 6, "val": 2, "test": 2, "total": 10} for row in table.values())
    assert [(s.path, s.split) for s in a] == [(s.path, s.split) for s in b]
    assert [(s.path, s.split) for s in a] != [(s.path, s.split) for s in c]


def test_duplicates_never_straddle_splits(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=10, classes=("BLA",))
    for k in range(5):  # five byte-identical copies of one image
        shutil.copy(root / "BLA" / "BLA_00000.png", root / "BLA" / f"dup_{k}.png")
    for seed in range(5):
        samples, _ = prepare(root, ("BLA",), val=0.3, test=0.3, seed=seed)
        splits = {s.split for s in samples if s.sha256 == samples[0].sha256 or "dup" in s.path.name
                  or s.path.name == "BLA_00000.png"}
        assert len(splits) == 1


def test_manifest_round_trip_and_moved_root(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=4)
    samples, _ = prepare(root, CLASSES)
    # as `prepare` writes it: relative to the manifest's own folder, a plain CSV with no machine path
    path = write_manifest(samples, tmp_path / "out" / "m.csv")
    text = path.read_text()
    assert text.startswith("path,label,split,sha256") and str(tmp_path) not in text
    assert list(csv.DictReader(text.splitlines()))[0]["path"].startswith("../d/")  # readable by any CSV reader
    back = read_manifest(path)
    assert [(s.path.resolve(), s.label, s.split, s.sha256) for s in back] == \
           [(s.path.resolve(), s.label, s.split, s.sha256) for s in samples]
    # the images move: refused by name, then read from the folder named by --data-root
    moved = shutil.move(str(root), tmp_path / "moved")
    with pytest.raises(MarrowscopeError, match="--data-root"):
        read_manifest(path)
    back = read_manifest(path, data_root=moved)
    assert all(s.path.exists() for s in back) and back[0].rel == manifest_rows(path)[0]["path"][len("../d/"):]
    with pytest.raises(MarrowscopeError, match="does not hold the images"):
        read_manifest(path, data_root=tmp_path / "nowhere")


def test_old_manifest_with_root_line_still_reads(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=2)
    samples, _ = prepare(root, CLASSES)
    path = write_manifest(samples, root / "m.csv")
    path.write_text(f"# root: /elsewhere\n{path.read_text()}")
    assert len(read_manifest(path)) == len(samples)


def test_folder_without_manifest_is_split_on_the_fly(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=10)
    samples, _ = load_samples(root, CLASSES, seed=0)
    assert {s.split for s in samples} == {"train", "val", "test"}


def test_manifest_with_unknown_labels_is_refused(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=4, classes=("BLA", "XYZ"))
    samples, _ = prepare(root)
    m = write_manifest(samples, tmp_path / "m.csv")
    with pytest.raises(MarrowscopeError, match="XYZ"):
        load_samples(m, ("BLA",))

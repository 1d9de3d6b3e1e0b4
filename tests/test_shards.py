"""LitData shards: prepare --shards packs the images, train streams them; shards of another format
or of other classes are refused with a sentence, and an unreadable item is skipped mid-run."""

import json

import pytest

from marrowscope.apps.cli import main
from marrowscope.core.errors import MarrowscopeError
from tests.conftest import make_dataset

TRAIN = ["--arch", "test_efficientnet", "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--workers", "2",
         "--accelerator", "cpu"]


@pytest.fixture
def shards(tmp_path):
    cells = make_dataset(tmp_path / "cells", per_class=10)
    assert main(["prepare", str(cells), "--out", str(tmp_path / "m.csv"), "--shards", str(tmp_path / "sh")]) == 0
    return tmp_path / "sh"


@pytest.mark.slow
def test_train_streams_shards_and_skips_an_unreadable_item(tmp_path, shards, capfd):
    from marrowscope.core.data import prepare
    from marrowscope.fit.shards import write_shards

    meta = json.loads((shards / "marrowscope_shards.json").read_text())
    assert meta["images"] == {"train": 49, "val": 7, "test": 14} and meta["format"] == 1
    assert main(["train", str(shards), "--out", str(tmp_path / "run"), *TRAIN]) == 0
    rows = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(rows) == 3 and (tmp_path / "run" / "model" / "model.safetensors").is_file()
    # a file broken before packing (as bytes can rot in storage): skipped when read, training goes on
    samples, _ = prepare(tmp_path / "cells")
    broken = next(s for s in samples if s.split == "train")
    broken.path.write_bytes(b"not an image")
    write_shards(samples, sorted({s.label for s in samples}), tmp_path / "sh2")
    assert main(["train", str(tmp_path / "sh2"), "--out", str(tmp_path / "run2"), *TRAIN]) == 0
    assert f"skipped {broken.rel}" in capfd.readouterr().err


@pytest.mark.slow
def test_shards_of_another_format_or_other_classes_are_refused(tmp_path, shards):
    from marrowscope.fit.shards import read_meta

    with pytest.raises(MarrowscopeError, match="not in --classes"):
        read_meta(shards, ["BLA", "EOS"])
    meta = json.loads((shards / "marrowscope_shards.json").read_text())
    (shards / "marrowscope_shards.json").write_text(json.dumps({**meta, "format": 0}))
    with pytest.raises(MarrowscopeError, match="another version of marrowscope"):
        read_meta(shards)
    assert main(["train", str(shards), "--out", str(tmp_path / "run"), *TRAIN]) == 2

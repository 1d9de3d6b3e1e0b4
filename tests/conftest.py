"""Shared fixtures and factories: synthetic 7-class cell images made on the fly, a tiny trained model folder,
the bad-file corpus and an image unlike any cell."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from marrowscope.core.classes import CLASSES

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
from marrowscope.core.samples import DEFAULT_DATA_CANDIDATES  # noqa: E402

REAL_DATA = DEFAULT_DATA_CANDIDATES[0]  # ../shared/data/bone-marrow-7 beside the checkout
COLOURS = [(200, 40, 40), (40, 160, 40), (40, 40, 200), (200, 160, 40), (160, 40, 200), (40, 160, 160), (90, 90, 90)]


def synthetic_cell(label_index: int, seed: int, size: int = 48) -> Image.Image:
    """A disc whose colour and size give away the class, on a light background with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = size * (0.2 + 0.03 * label_index)
    cy, cx = size / 2 + rng.uniform(-3, 3, 2)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    img = np.full((size, size, 3), 235, np.float64)
    img[disc] = COLOURS[label_index % len(COLOURS)]  # more than 7 classes: told apart by size too
    img += rng.normal(0, 8, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_dataset(root: Path, per_class: int = 12, classes=CLASSES, nested: bool = False) -> Path:
    for i, c in enumerate(classes):
        folder = root / c / ("0001-1000" if nested else "")
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            synthetic_cell(i, seed=1000 * i + k).save(folder / f"{c}_{k:05d}.png")
    return root


def make_cell_folder(folder: Path, n: int, seed: int = 0) -> Path:
    """A flat folder of ``n`` unlabelled synthetic cells, as a lab has them, and one file that is not an image."""
    folder.mkdir(parents=True)
    for k in range(n):
        synthetic_cell(k % 7, seed + k).save(folder / f"cell{k:03d}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "cells")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder of timm's test_efficientnet trained 3 epochs at 32 px on synthetic cells."""
    from marrowscope.core.config import TrainConfig
    from marrowscope.fit.train import fit

    base = tmp_path_factory.mktemp("tiny")
    data = make_dataset(base / "cells", per_class=16)
    cfg = TrainConfig(data=str(data), out=str(base / "run"), model="test_efficientnet", img_size=32, epochs=3,
                      batch_size=16, lr=5e-3, workers=0, accelerator="cpu", seed=0)
    fit(cfg)
    return base / "run"


@pytest.fixture(scope="session")
def tiny_model(tiny_run) -> Path:
    return tiny_run / "model"


@pytest.fixture(scope="session")
def predictor(tiny_model):
    """The tiny model's predictor (PyTorch backend), shared by the tests that only read from it."""
    from marrowscope.core.predict import Predictor

    return Predictor(tiny_model, backend="torch")


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "BLA").is_dir():
        pytest.skip(f"real images not present at {REAL_DATA} (bone-marrow-7 is read from ../shared)")
    return REAL_DATA


# The one corpus of bad and odd files that every entry point that reads images meets.
BAD = {  # file name -> (bytes, words the reason must contain)
    "zero.jpg": (b"", "empty"),
    "text.jpg": (b"just some text, not pixels", "not an image format"),
    "doc.jpg": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj", "not an image format"),
    "bomb.png": (None, "above the limit"),
    "truncated.jpg": (None, "truncated or corrupt"),
    "thin.png": (None, "side ratio"),  # 100000 x 1: once 20 GB after the resize
    "=HYPERLINK(1).png": (b"formula", "not an image format"),  # a name a spreadsheet would run
}


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def make_corpus(folder):
    """Bad files and odd-but-valid files, in one class folder 'BLA'."""
    cls = folder / "BLA"
    cls.mkdir(parents=True)
    cell = synthetic_cell(0, 1, size=40)
    full = _bytes(Image.effect_noise((64, 64), 60).convert("RGB"), "JPEG")
    data = {**{k: v for k, (v, _) in BAD.items()},
            "bomb.png": _bytes(Image.new("1", (20000, 20000)), "PNG"),
            "truncated.jpg": full[: len(full) // 2],
            "thin.png": _bytes(Image.new("L", (100000, 1)), "PNG")}
    exif = Image.Exif()
    exif[0x0112] = 6
    odd = {
        "rgba.png": _bytes(cell.convert("RGBA"), "PNG"),
        "onebit.png": _bytes(cell.convert("1"), "PNG"),
        "gray.png": _bytes(cell.convert("L"), "PNG"),
        "sixteen.png": _bytes(Image.fromarray((np.asarray(cell.convert("L")).astype(np.uint16) * 257)), "PNG"),
        "sixteen.tif": _bytes(Image.fromarray((np.asarray(cell.convert("L")).astype(np.uint16) * 257)), "TIFF"),
        "cmyk.jpg": _bytes(cell.convert("CMYK"), "JPEG"),
        "exif.jpg": _bytes(cell.resize((40, 20)), "JPEG", exif=exif),
        "anim.gif": _bytes(cell, "GIF", save_all=True, append_images=[synthetic_cell(1, 2, size=40)]),
        "tiny.png": _bytes(Image.new("RGB", (1, 1), (200, 100, 50)), "PNG"),
        "plain.jpg": _bytes(cell, "JPEG"),
    }
    for name, content in {**data, **odd}.items():
        (cls / name).write_bytes(content)
    return cls, set(odd)


def strange_image(seed: int) -> Image.Image:
    """Nothing like the synthetic training cells: saturated stripes."""
    a = np.zeros((48, 48, 3), np.uint8)
    a[:, ::4] = (255, 255, 0)
    a[::3] = (0, 255, 255)
    return Image.fromarray(np.roll(a, seed, axis=1))

"""Decode images: the ONLY place in marrowscope where files and uploads become pixels.

Dataset, predictor, CLI and app all call :func:`decode_image`, so every entry point treats odd
files the same way: EXIF rotation is applied, transparency is flattened onto white, 16-bit and
CMYK images are converted, animations give their first frame, and anything that cannot be a cell
image raises :class:`~marrowscope.core.errors.ImageDecodeError` with a sentence saying why.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Iterable, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from marrowscope.core.errors import ImageDecodeError, Unreadable

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")
# A cell crop is a few hundred pixels wide; whole slides are not what the model reads.
# 40 MP admits a 6000 x 6000 field of view and refuses decompression bombs before decoding.
MAX_PIXELS = 40_000_000
# The eval transform scales the short side to the model's input size, so a thin image's long side
# grows by the aspect ratio: a 100000 x 1 PNG of a few hundred bytes became 20 GB. A cell crop is
# near square; 10:1 admits any crop a person would take and bounds the work at 10x the input size.
MAX_ASPECT = 10

ImageSource = Union[str, Path, bytes, np.ndarray, Image.Image]


def is_image_path(path: Path) -> bool:
    """Whether a file name has one of the image extensions that folder scans pick up."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def decode_image(src: ImageSource, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Turn a path, raw bytes, an array or a PIL image into an 8-bit RGB PIL image.

    Raises:
        ImageDecodeError: the source is missing, empty, not an image, truncated, too large or
            in a form that cannot be read as a colour image. The message names the source.
    """
    name = _describe(src)
    if isinstance(src, Image.Image):
        _check_aspect(*src.size, name)
        return _to_rgb(src, name)
    if isinstance(src, np.ndarray):
        return _from_array(src, name)
    if isinstance(src, (bytes, bytearray)):
        if not src:
            raise ImageDecodeError(f"{name} is empty (0 bytes).")
        return _open(io.BytesIO(src), name, max_pixels)
    if isinstance(src, (str, Path)):
        path = Path(src)
        if not path.exists():
            raise ImageDecodeError(f"{name} does not exist.")
        if path.is_dir():
            raise ImageDecodeError(f"{name} is a folder, not an image file.")
        if path.stat().st_size == 0:
            raise ImageDecodeError(f"{name} is empty (0 bytes).")
        with open(path, "rb") as fh:
            return _open(fh, name, max_pixels)
    raise ImageDecodeError(
        f"cannot read an image from a {type(src).__name__}; expected a path, bytes, array or PIL image."
    )


def _describe(src: object) -> str:
    if isinstance(src, (str, Path)):
        return f"'{src}'"
    if isinstance(src, (bytes, bytearray)):
        return "the uploaded data"
    return "the image"


def _open(fh, name: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below replaces PIL's bomb warning with a clear error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fh)
            w, h = im.size
            if w * h > max_pixels:
                raise ImageDecodeError(
                    f"{name} is {w} x {h} pixels, above the limit of {max_pixels:,} pixels; "
                    "cut it into smaller images first (`marrowscope count` reads whole fields of up to "
                    "8,000 x 8,000 px; `predict` reads single-cell crops)."
                )
            if w < 1 or h < 1:
                raise ImageDecodeError(f"{name} has no pixels ({w} x {h}).")
            _check_aspect(w, h, name)
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # animations and multi-page TIFFs: the first frame is the cell
            im = ImageOps.exif_transpose(im)
            im.load()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"{name} is not an image format marrowscope can read "
            "(expected JPEG, PNG, TIFF, BMP, GIF or WebP)."
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"{name} is above the limit of {max_pixels:,} pixels and too large to decode "
                               f"safely ({exc}).") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types on hostile files
        # (OSError, ValueError, SyntaxError, TypeError, KeyError, struct.error ... found by fuzzing):
        # at this trust boundary every one of them means "not a readable image".
        raise ImageDecodeError(f"{name} is truncated or corrupt ({type(exc).__name__}: {exc}).") from None
    return _to_rgb(im, name)


def _check_aspect(w: int, h: int, name: str) -> None:
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageDecodeError(
            f"{name} is {w} x {h} pixels, a side ratio above {MAX_ASPECT}:1; a single-cell crop is close "
            "to square, so crop the cell first."
        )


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, flattening transparency onto white."""
    try:
        if im.mode == "RGB":
            return im
        if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            return _from_array(np.asarray(im), name)
        if im.mode == "P":
            im = im.convert("RGBA")
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            rgba = im.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return im.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - same boundary as _open: conversion of hostile data
        raise ImageDecodeError(
            f"{name} has pixel mode {im.mode!r}, which cannot be converted to RGB ({exc})."
        ) from None


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    """Arrays: HxW, HxWx1, HxWx3 or HxWx4; uint8, 16-bit, or float in [0, 1]."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or 0 in arr.shape:
        raise ImageDecodeError(f"{name} has array shape {arr.shape}; expected H x W, H x W x 3 or H x W x 4.")
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        if not np.isfinite(a).all():
            raise ImageDecodeError(f"{name} contains NaN or infinite values.")
        if np.issubdtype(arr.dtype, np.floating) and a.max(initial=0) <= 1.0:
            a = a * 255.0
        elif a.max(initial=0) > 255:
            a = a / 257.0  # 16-bit range onto 8-bit
        arr = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    _check_aspect(arr.shape[1], arr.shape[0], name)
    im = Image.fromarray(arr)
    return _to_rgb(im, name) if im.mode != "RGB" else im


def collect_images(paths: Iterable[str | Path]) -> tuple[list[Path], list[Unreadable]]:
    """Files as given, folders searched recursively for images; missing paths reported."""
    found, missing = [], []
    for p in map(Path, paths):
        if p.is_dir():
            images = sorted(f for f in p.rglob("*") if f.is_file() and is_image_path(f))
            if not images:
                missing.append(Unreadable(p, f"folder '{p}' holds no images."))
            found += images
        elif p.exists():
            found.append(p)
        else:
            missing.append(Unreadable(p, f"'{p}' does not exist."))
    return found, missing

"""A batch of uploads as files on disk: plain images and the image members of zips.

The app's batch view hands its uploads here. Zip members are copied, by index and never by their
stored path, into a per-batch folder (a member named ``../../etc/x.png`` cannot write outside it),
so a session's state holds paths rather than image bytes and the folder goes when the batch does.
One size budget covers the whole request; a member that cannot be unpacked (corrupt deflate
stream, encryption, an unsupported method such as Deflate64) is reported and the rest go on.
"""

from __future__ import annotations

import shutil
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from marrowscope.core.errors import Unreadable
from marrowscope.core.images import is_image_path

MAX_BATCH_FILES = 2000          # images per request, zip members included
MAX_REQUEST_BYTES = 500 * 2**20  # uncompressed bytes per request, all uploads and zips together
# What zipfile raises on a member it cannot unpack: corrupt streams (zlib.error, BadZipFile on a
# CRC mismatch, EOFError), encryption (RuntimeError), unsupported methods (NotImplementedError).
UNPACK_ERRORS = (zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError, EOFError, OSError)


@dataclass
class Uploads:
    """Files to classify, the names to show for them, and what could not be read."""

    files: list[Path] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    problems: list[Unreadable] = field(default_factory=list)
    budget: int = field(default_factory=lambda: MAX_REQUEST_BYTES)  # read per request (tests lower it)

    def full(self, size: int) -> bool:
        return len(self.files) >= MAX_BATCH_FILES or size > self.budget

    def add(self, path: Path, name: str, size: int) -> None:
        self.files.append(path)
        self.names.append(name)
        self.budget -= size


def expand_uploads(paths: Sequence[str | Path], workdir: Path) -> Uploads:
    """Uploaded files and zips -> images to classify (zip members copied into ``workdir``)."""
    out = Uploads()
    for p in map(Path, paths):
        size = p.stat().st_size if p.is_file() else 0
        if out.full(size):
            out.problems.append(Unreadable(p.name, _limit_sentence()))
            break
        if p.suffix.lower() == ".zip":
            if not _expand_zip(p, workdir, out):
                break
        else:
            out.add(p, p.name, size)
    return out


def _limit_sentence() -> str:
    return (f"not read: one batch holds at most {MAX_BATCH_FILES} images and {MAX_REQUEST_BYTES // 2**20} MB; "
            "classify the rest in another batch.")


def _expand_zip(zip_path: Path, workdir: Path, out: Uploads) -> bool:
    """Copy the image members of one zip into ``workdir``; False once the request's limits are hit."""
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        out.problems.append(Unreadable(zip_path.name, f"not a readable zip ({exc})."))
        return True
    with zf:
        for info in zf.infolist():
            name = f"{zip_path.name}/{info.filename}"
            if info.is_dir() or not is_image_path(Path(info.filename)):
                continue
            if out.full(info.file_size):
                out.problems.append(Unreadable(name, _limit_sentence()))
                return False
            if info.flag_bits & 0x1:
                out.problems.append(Unreadable(name, "is encrypted; unzip it with its password and upload the images."))
                continue
            target = workdir / f"{len(out.files):05d}{Path(info.filename).suffix.lower()}"
            try:
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except UNPACK_ERRORS as exc:
                target.unlink(missing_ok=True)
                out.problems.append(Unreadable(name, f"could not be unpacked from the zip ({type(exc).__name__}: "
                                                     f"{exc})."))
                continue
            out.add(target, name, info.file_size)
    return True

"""What a dataset is made of: a :class:`Sample` per image, its split, and where the default data
folder is found. The bottom of the data modules: :mod:`~marrowscope.core.manifest` and
:mod:`~marrowscope.core.data` both build on it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from marrowscope.core.errors import MarrowscopeError

SPLITS = ("train", "val", "test")
SPLIT_CHOICES = (*SPLITS, "all")
DEFAULT_DATA_NAME = "bone-marrow-7"
# The shared data sits beside the checkout (../shared/data): found from the package's location in a
# source checkout, or from the working directory when marrowscope is installed elsewhere.
DEFAULT_DATA_CANDIDATES = (Path(__file__).resolve().parents[4] / "shared" / "data" / DEFAULT_DATA_NAME,
                           Path("..") / "shared" / "data" / DEFAULT_DATA_NAME)


def default_data_dir() -> Optional[Path]:
    """The one place the default data folder is found: $MARROWSCOPE_DATA, else
    ``../shared/data/bone-marrow-7`` beside the checkout, if present."""
    for cand in (os.environ.get("MARROWSCOPE_DATA"), *DEFAULT_DATA_CANDIDATES):
        if cand and Path(cand).is_dir():
            return Path(cand).resolve()
    return None


def data_or_default(data: Optional[str | Path]) -> Path:
    """The dataset a command should use: the one named, else the default data folder."""
    if data:
        return Path(data)
    found = default_data_dir()
    if found is None:
        raise MarrowscopeError(f"no DATA given and ../shared/data/{DEFAULT_DATA_NAME} is not present (nor "
                               "$MARROWSCOPE_DATA); name a dataset folder or manifest.")
    return found


@dataclass
class Sample:
    path: Path
    label: str
    split: str = ""
    sha256: str = ""
    rel: str = ""  # the path relative to the dataset's root, as reports and manifests show it

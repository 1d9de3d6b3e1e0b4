"""CSV files that marrowscope writes: written atomically, and safe to open in a spreadsheet.

A file name is user input. One named ``=HYPERLINK("http://...").jpg`` would become a live formula
in Excel or LibreOffice when a lab opens the predictions, so every text cell that starts with a
formula character gets a leading apostrophe (OWASP's advice for CSV injection).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Sequence

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula, neutralised; numbers unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def write_csv(path: str | Path, columns: Sequence[str], rows: Iterable[dict | Sequence]) -> Path:
    """Write ``rows`` (dicts keyed by ``columns``, or sequences in their order) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for row in rows:
            values = [row.get(c, "") for c in columns] if isinstance(row, dict) else row
            w.writerow([safe_cell(v) for v in values])
    os.replace(tmp, path)
    return path

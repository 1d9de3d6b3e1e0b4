"""Counting whole fields: find the white cells (:mod:`marrowscope.core.detect`), classify each as
``predict`` would, and give the differential with 95% intervals and advisories.

The rules a count follows:

- A cell whose box reaches the frame's edge is listed but not counted: part of it is missing, so its
  class is unsure, and the next frame may hold it whole.
- Tiles of one frame share an overlap wider than a cell, and a cell is taken only from the tile that owns
  its centre, so no cell is counted twice within a frame. Frames are taken as distinct fields of view:
  overlapping frames of one slide must be stitched (or cropped apart) first.
- A single-cell crop counts its cell, read exactly as ``predict`` reads the file: a frame with no whole
  cell but one over its centre, or a frame about one training crop wide (an analyser's crop) whose one
  whole cell covers its centre.
- The differential's percentages are of the identifiable cells: NIF (not identifiable) cells are counted
  and listed beside them, as a smear's smudge cells are, not in the 100%.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from marrowscope.core.batch import BatchResult
from marrowscope.core.csvfiles import write_csv
from marrowscope.core.detect import ASSUMED_UM, MAX_FIELD_PIXELS, Box, field_scale, find_cells
from marrowscope.core.errors import ImageDecodeError, MarrowscopeError, Unreadable
from marrowscope.core.images import collect_images, decode_image
from marrowscope.core.overlay import draw_overlay
from marrowscope.core.predict import Prediction, Predictor
from marrowscope.core.scale import ASSUMED, LAB_POOLED, Scale

BLAST_CUTS = (5, 10, 20)  # % blasts where the WHO 2022 and ICC myeloid categories change
NOT_IDENTIFIABLE = "NIF"
DETECT_MARGIN_UM = 0.8  # a box within 2 detection pixels (0.8 µm) of the edge reaches it
CROP_FIELDS = 1.6  # a frame at most this many training crops wide (in µm) may be a single-cell crop
# the least score of a crop's centred cell: FCOS's own floor. On bone-marrow-7's 525 test crops, 14 had their
# cell's box between 0.10 and 0.32, under the field threshold (0.34), and none had no box at all
CROP_MIN_SCORE = 0.05
CELL_COLUMNS = ["field", "cell", "x0", "y0", "x1", "y1", "detector_score", "counted", "note"]


@dataclass
class Cell:
    """One detected white cell of a field: its box, whether it counts, and its prediction (None when
    it was not classified: cut by the edge)."""

    number: int
    box: Box
    counted: bool
    note: str = ""
    prediction: Optional[Prediction] = None


@dataclass
class Field:
    """One frame's cells, or why it could not be read (``problem``)."""

    source: str
    size: tuple[int, int] = (0, 0)
    scale: Optional[Scale] = None
    cells: list[Cell] = field(default_factory=list)
    note: str = ""
    problem: Optional[Unreadable] = None
    path: Optional[Path] = None  # the file it was read from (a zip's member: unpacked into a work folder)

    @property
    def counted(self) -> list[Cell]:
        return [c for c in self.cells if c.counted]


def cell_window(image: Image.Image, box: Box, side: float) -> Image.Image:
    """The ``side`` x ``side`` px window centred on the cell, mirrored out past the frame's edge, so the
    classifier sees the cell centred as in its training crops."""
    cx, cy = box.centre
    half = side / 2
    x0, y0, x1, y1 = round(cx - half), round(cy - half), round(cx + half), round(cy + half)
    inside = image.crop((max(0, x0), max(0, y0), min(image.width, x1), min(image.height, y1)))
    pad = ((max(0, -y0), max(0, y1 - image.height)), (max(0, -x0), max(0, x1 - image.width)), (0, 0))
    if not any(p for pair in pad for p in pair):
        return inside
    a = np.asarray(inside)
    mode = "reflect" if all(p < n for (p0, p1), n in zip(pad[:2], a.shape[:2]) for p in (p0, p1)) else "symmetric"
    return Image.fromarray(np.pad(a, pad, mode=mode))


def training_scale(predictor: Predictor) -> tuple[float, float]:
    """(the training images' µm per pixel, the side of a training crop in µm): the window a cell is read in.
    A folder without a measured scale: bone-marrow-7's, 250 px at 0.095 µm."""
    scale = predictor.info.scale or {}
    um = scale.get("pixel_size_um", ASSUMED_UM)
    return um, um * scale.get("field_px", 250)


class FieldCounter:
    """Fields -> :class:`Field` results with ``detector`` and ``predictor``.

    ``pixel_size``: the frames' µm per pixel when known (otherwise each frame's red cells, then the
    training images' scale, as for single cells)."""

    def __init__(self, predictor: Predictor, detector, pixel_size: Optional[float] = None):
        self.predictor, self.detector = predictor, detector
        self.pixel_size = predictor.preprocess.check_pixel_size(pixel_size) if pixel_size else None
        self.train_um, self.field_um = training_scale(predictor)
        # a frame without red cells: its lab's pooled pixel size where the folder was fitted to one, else the
        # training images'
        lab_um = predictor.preprocess.lab_pixel_size
        self.assumed = (lab_um, LAB_POOLED) if lab_um else (self.train_um, ASSUMED)

    def fields(self, files: Sequence[Path], names: Sequence[str]) -> Iterator[Field]:
        for f, name in zip(files, names):
            yield self.count_one(f, name)

    def count_one(self, src: Path, name: str) -> Field:
        try:
            image = decode_image(src, max_pixels=MAX_FIELD_PIXELS)
            scale = field_scale(image, self.pixel_size, *self.assumed)
            # one pass down to a crop's floor: the boxes above the field threshold are the field's cells, the
            # rest can only be a crop's centred cell (below)
            found = find_cells(self.detector, image, scale, threshold=min(CROP_MIN_SCORE, self.detector.threshold))
        except (ImageDecodeError, MarrowscopeError) as exc:
            return Field(name, problem=Unreadable(name, str(exc)))
        out = Field(name, image.size, scale, path=Path(src))
        margin = 1.0 + DETECT_MARGIN_UM / scale.pixel_size_um
        for k, box in enumerate([b for b in found if b.score >= self.detector.threshold], 1):
            cut = box.touches_edge(image.width, image.height, margin)
            out.cells.append(Cell(k, box, not cut, "cut by the frame's edge: not counted" if cut else ""))
        centre = [c for c in out.cells if c.box.covers(image.width / 2, image.height / 2)]
        # a frame about one training crop in size, its one whole cell (or none) over its centre, is a single-cell
        # crop (an analyser's, or a hand crop): read whole, as predict reads it, rather than re-centred on a box
        crop_like = max(image.size) * scale.pixel_size_um <= CROP_FIELDS * self.field_um
        if crop_like and not centre:  # a crop holds its cell at its centre: a less sure box there still counts
            unsure = [b for b in found if b.score >= CROP_MIN_SCORE and b.covers(image.width / 2, image.height / 2)]
            if unsure:
                box = max(unsure, key=lambda b: b.score)
                out.cells.append(Cell(len(out.cells) + 1, box, False))
                centre = [out.cells[-1]]
        if centre and (not out.counted or (crop_like and out.counted == centre[:1] and len(out.counted) == 1)):
            cell = out.counted[0] if out.counted else max(centre, key=lambda c: c.box.score)
            cell.counted, cell.note = True, "the frame is a single-cell crop: read whole, as predict reads it" + (
                f" (its box scored {cell.box.score:.2f}, under the field threshold)"
                if cell.box.score < self.detector.threshold else "")
            out.note = "read as a single-cell crop"
            cell.prediction = self.predictor.predict_one(image, self.pixel_size)
            return out
        if not out.cells:
            out.note = "no white cell found"
        elif not out.counted:
            out.note = "every white cell found is cut by the frame's edge"
        todo = list(out.counted)
        if todo:
            side = self.field_um / scale.pixel_size_um
            windows = [cell_window(image, c.box, side) for c in todo]
            names = [f"{name}#{c.number}" for c in todo]
            for c, r in zip(todo, self.predictor.predict_many(windows, names=names, pixel_size=scale.pixel_size_um)):
                # the window was read at the field's scale: the row says where that came from
                c.prediction = replace(r, scale=scale) if isinstance(r, Prediction) else None
        return out


def wilson(k: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of k in n, as fractions (scipy's)."""
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass
class Differential:
    """The differential of counted cells: per class, cells, percent and its 95% interval."""

    classes: list[str]
    calls: list[str]
    decisions: list[str]
    target: int
    unusual: int = 0  # counted cells the domain check finds unlike the training cells

    @property
    def identifiable(self) -> int:
        return sum(1 for c in self.calls if c != NOT_IDENTIFIABLE)

    def rows(self) -> list[dict]:
        n = self.identifiable
        out = []
        for c in self.classes:
            k = sum(1 for x in self.calls if x == c)
            of = len(self.calls) if c == NOT_IDENTIFIABLE else n
            lo, hi = wilson(k, of)
            out.append({"class": c, "cells": k, "percent": round(100 * k / of, 1) if of else 0.0,
                        "low": round(100 * lo, 1), "high": round(100 * hi, 1),
                        "of": "all counted cells" if c == NOT_IDENTIFIABLE else "identifiable cells"})
        return out

    def advisories(self) -> list[str]:
        n, rows = self.identifiable, {r["class"]: r for r in self.rows()}
        out = []
        if self.unusual and self.unusual >= len(self.calls) / 2:
            out.append(f"{self.unusual} of {len(self.calls)} counted cells look unlike the cells the model learnt from "
                       "(another lab, stain, scanner or magnification?): the differential may be wrong, and none of "
                       "them is accepted; check them, or adapt the model to this lab.")
        if len(self.calls) < self.target:
            out.append(f"{len(self.calls)} of the target {self.target} cells counted: count more fields before "
                       f"reading the differential.")
        bla = rows.get("BLA")
        if bla and n:
            for cut in BLAST_CUTS:
                if bla["low"] < cut <= bla["high"]:
                    out.append(f"the blast interval {bla['low']:.0f}-{bla['high']:.0f}% straddles {cut}%: count "
                               f"more cells before calling it.")
        review = sum(1 for d in self.decisions if d != "accepted")
        if review:
            out.append(f"{review} of {len(self.calls)} counted cells are for a person's review (review or "
                       f"possible-blast); the differential counts them by the model's call until then.")
        flagged = sum(1 for d in self.decisions if d == "possible-blast")
        if flagged:
            out.append(f"{flagged} cell(s) flagged possible-blast: not called blasts, but a blast cannot be ruled out.")
        return out


@dataclass
class Count:
    """All fields of one count, their cells, and the differential."""

    fields: list[Field]
    classes: list[str]
    target: int
    top_k: int = 3

    @property
    def cells(self) -> list[tuple[Field, Cell]]:
        return [(f, c) for f in self.fields for c in f.cells]

    @property
    def classified(self) -> list[Cell]:
        return [c for f in self.fields for c in f.counted if c.prediction is not None]

    @property
    def differential(self) -> Differential:
        cells = self.classified
        return Differential(self.classes, [c.prediction.call for c in cells], [c.prediction.decision for c in cells],
                            self.target, sum(bool(c.prediction.unusual) for c in cells))

    def cell_rows(self, predictor: Predictor) -> tuple[list[str], list[dict]]:
        """cells.csv: a row per detected cell (and per field without one, or unreadable), with ``predict``'s
        columns for each classified cell."""
        batch = BatchResult.for_predictor(predictor, self.top_k)
        rows = []
        for f in self.fields:
            if f.problem is not None:
                rows.append({"field": f.source, "counted": "no", "note": f.problem.reason,
                             "status": "error", "error": f.problem.reason})
                continue
            if not f.cells:
                rows.append({"field": f.source, "counted": "no", "note": f.note})
            for c in f.cells:
                b = c.box
                row = {"field": f.source, "cell": c.number, "x0": round(b.x0), "y0": round(b.y0), "x1": round(b.x1),
                       "y1": round(b.y1), "detector_score": round(b.score, 3), "counted": "yes" if c.counted else "no",
                       "note": c.note}
                if c.prediction is not None:
                    row.update(batch.add(c.prediction, f"{f.source}#{c.number}"))
                rows.append(row)
        columns = CELL_COLUMNS + [c for c in batch.columns() if c != "error"] + ["error"]
        return columns, rows

    def summary(self) -> dict:
        d = self.differential
        unread = [f for f in self.fields if f.problem is not None]
        return {"fields": len(self.fields), "fields_unreadable": len(unread),
                "fields_without_white_cells": sum(1 for f in self.fields if f.problem is None and not f.cells),
                "cells_detected": len(self.cells), "cells_counted": len(d.calls),
                "cells_not_counted_edge": sum(1 for _, c in self.cells if not c.counted),
                "cells_for_review": sum(1 for x in d.decisions if x != "accepted"), "cells_unusual": d.unusual,
                "target": self.target, "identifiable_cells": d.identifiable,
                "differential": d.rows(), "advisories": d.advisories(),
                "unreadable": [{"field": f.source, "reason": f.problem.reason} for f in unread]}

    def write(self, out_dir: str | Path, predictor: Predictor, overlays: bool = True) -> dict:
        """cells.csv, count.csv, count.json and (``overlays``) one PNG per field into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        columns, rows = self.cell_rows(predictor)
        write_csv(out / "cells.csv", columns, rows)
        summary = self.summary()
        write_csv(out / "count.csv", ["class", "cells", "percent", "low", "high", "of"], summary["differential"])
        tmp = out / "count.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        tmp.replace(out / "count.json")
        if overlays:
            (out / "overlays").mkdir(exist_ok=True)
            for f, png in zip(self.fields, overlay_names([f.source for f in self.fields])):
                if f.problem is None:
                    image = decode_image(f.path, max_pixels=MAX_FIELD_PIXELS)
                    draw_overlay(image, f, self.classes).save(out / "overlays" / png)
        return summary


def overlay_names(sources: Sequence[str]) -> list[str]:
    """One PNG name per field: its file's stem, numbered where two fields share one."""
    seen: dict[str, int] = {}
    out = []
    for s in sources:
        stem = Path(s).stem or "field"
        seen[stem] = seen.get(stem, 0) + 1
        out.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.png")
    return out


def gather_fields(paths: Sequence[str | Path], workdir: Path) -> tuple[list[Path], list[str], list[Unreadable]]:
    """Files, folders (searched recursively) and zips of fields -> (files, the names to show, what could not
    be read); zip members are unpacked into ``workdir`` (:func:`marrowscope.core.uploads.expand_uploads`)."""
    from marrowscope.core.uploads import expand_uploads

    zips = [Path(p) for p in paths if Path(p).suffix.lower() == ".zip" and Path(p).is_file()]
    files, problems = collect_images([p for p in paths if Path(p) not in zips])
    names = [str(f) for f in files]
    if zips:
        up = expand_uploads(zips, workdir)
        files, names, problems = files + up.files, names + up.names, problems + up.problems
    return files, names, problems


def count_fields(predictor: Predictor, detector, files: Sequence[Path], names: Optional[Sequence[str]] = None,
                 problems: Sequence[Unreadable] = (), target: int = 200, pixel_size: Optional[float] = None,
                 top_k: int = 3, progress: bool = False) -> Count:
    """Count the white cells of ``files`` (shown as ``names``); ``problems`` (files that could not be read)
    are reported in the count as fields without cells. ``progress``: a progress bar over the fields."""
    if target < 1:
        raise MarrowscopeError(f"--target {target}: count to at least 1 cell (200 in blood, 500 in marrow).")
    counter = FieldCounter(predictor, detector, pixel_size)
    bad = [Field(str(p.source), problem=p) for p in problems]
    stream = counter.fields(files, names or [str(f) for f in files])
    if progress and len(files) > 1:
        from tqdm import tqdm

        stream = tqdm(stream, total=len(files), unit="field", desc="counting")
    return Count(bad + list(stream), list(predictor.classes), target, top_k)

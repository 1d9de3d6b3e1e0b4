"""Batch results: per-image rows, the differential count, and their CSV files.

Shared by ``marrowscope predict`` and the app's batch view, so both count cells the same way.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from marrowscope.predict import Prediction, Predictor, collect_images, differential_count


@dataclass
class BatchResult:
    classes: list[str]
    top_k: int
    review_below: float
    rows: list[dict] = field(default_factory=list)

    @property
    def errors(self) -> list[dict]:
        return [r for r in self.rows if r["status"] != "ok"]

    @property
    def counts(self) -> list[dict]:
        return differential_count([r["predicted"] for r in self.rows if r["status"] == "ok"], self.classes)

    def add(self, pred: Prediction) -> dict:
        if pred.error:
            row = {"file": pred.source, "status": "error", "predicted": "", "probability": "", "review": "",
                   "error": pred.error}
        else:
            top = pred.top_k(self.classes, self.top_k)
            row = {"file": pred.source, "status": "ok", "predicted": top[0][0], "probability": round(top[0][1], 4),
                   "review": "yes" if top[0][1] < self.review_below else "", "error": ""}
            for i, (label, p) in enumerate(top, 1):
                row[f"top{i}"], row[f"p{i}"] = label, round(p, 4)
        self.rows.append(row)
        return row

    def columns(self) -> list[str]:
        tops = [c for i in range(1, self.top_k + 1) for c in (f"top{i}", f"p{i}")]
        return ["file", "status", "predicted", "probability", *tops, "review", "error"]

    def write(self, out_csv: str | Path) -> tuple[Path, Path]:
        """``out_csv`` (one row per image) and ``<stem>_counts.csv`` (the differential count)."""
        out_csv = Path(out_csv)
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        with open(out_csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, self.columns(), extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)
        counts_csv = out_csv.with_name(out_csv.stem + "_counts.csv")
        with open(counts_csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, ["class", "cells", "percent"])
            w.writeheader()
            w.writerows(self.counts)
        return out_csv, counts_csv

    def summary(self) -> str:
        ok = len(self.rows) - len(self.errors)
        flagged = sum(1 for r in self.rows if r["review"])
        lines = [f"differential count of {ok} classified cell(s):"]
        lines += [f"  {c['class']:<5}{c['cells']:>7}{c['percent']:>7.1f} %" for c in self.counts]
        lines.append(f"{flagged} cell(s) flagged for review (top probability below {self.review_below:.2f})")
        if self.errors:
            lines.append(f"{len(self.errors)} file(s) could not be read:")
            lines += [f"  {r['file']}: {r['error']}" for r in self.errors]
        return "\n".join(lines)


def run_batch(predictor: Predictor, paths: Sequence[str | Path], out_csv: Optional[str | Path] = None,
              top_k: int = 3, review_below: float = 0.6, batch_size: int = 32, progress: bool = False,
              launch: Optional[dict] = None) -> Optional[BatchResult]:
    """Classify files and folders (recursive); unreadable files are reported, the rest classified.

    With ``launch`` (``devices``, ``num_nodes``, ``accelerator``) the files are shared out over
    Lightning DDP ranks; the result (and the CSV) comes from global rank 0, other ranks get None.
    """
    files, missing = collect_images(paths)
    result = BatchResult(list(predictor.classes), top_k, review_below)
    if launch:
        from marrowscope.distributed import predict_distributed

        work = Path(out_csv or "predictions.csv").with_suffix(".parts")
        stream = predict_distributed(predictor, files, work, batch_size=batch_size,
                                     **launch)
        if stream is None:
            return None
    else:
        stream = predictor.predict_many(files, batch_size=batch_size)
    if progress and len(files) > batch_size and not launch:
        from tqdm import tqdm

        stream = tqdm(stream, total=len(files), unit="img", desc="classifying")
    for pred in [*missing, *stream]:
        result.add(pred)
    if out_csv:
        result.write(out_csv)
    return result

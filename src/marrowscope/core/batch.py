"""Batch prediction: classify many files, one row per image, the differential count, their CSVs.

Shared by ``marrowscope predict`` and the app's batch view, so both count cells the same way.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from marrowscope.core.csvfiles import write_csv
from marrowscope.core.errors import Unreadable
from marrowscope.core.images import collect_images
from marrowscope.core.partial import PartialFile, identity
from marrowscope.core.policy import DECISIONS, Policy
from marrowscope.core.predict import Predictor, Result

UNUSUAL_WARNING = ("these images look unlike the images the model learnt from (another lab, stain, scanner or "
                   "magnification?): results may be wrong.")


def blur_cell(blur: Optional[float]) -> str:
    """The focus blur for the CSVs of predict and evaluate: px, 0 when the image was left alone, empty
    where the model folder has no focus settings."""
    return "" if blur is None else f"{blur:.2f}"


@dataclass
class BatchResult:
    classes: list[str]
    top_k: int = 3
    policy: Policy = field(default_factory=Policy)
    unusual_above: Optional[float] = None  # the model folder's domain-check threshold, if it has one
    rows: list[dict] = field(default_factory=list)

    @classmethod
    def for_predictor(cls, predictor: Predictor, top_k: int = 3) -> "BatchResult":
        """An empty result with the predictor's classes, review policy and domain-check threshold."""
        return cls(list(predictor.classes), top_k, predictor.policy, predictor.unusual_above)

    @property
    def unusual(self) -> list[dict]:
        return [r for r in self.rows if r.get("unusual") == "yes"]

    @property
    def errors(self) -> list[dict]:
        return [r for r in self.rows if r["status"] != "ok"]

    @property
    def classified(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "ok"]

    @property
    def counts(self) -> list[dict]:
        return differential_count([r["predicted"] for r in self.classified], self.classes)

    @property
    def decision_counts(self) -> dict[str, int]:
        """Cells per decision: accepted, review, possible-blast (zeros included)."""
        return {d: sum(1 for r in self.classified if r["decision"] == d) for d in DECISIONS}

    def add(self, result: Result, name: Optional[str] = None) -> dict:
        """One row for a prediction or an unreadable file; ``name`` replaces the source as shown."""
        name = result.source if name is None else name
        if isinstance(result, Unreadable):
            row = {"file": name, "status": "error", "predicted": "", "probability": "", "decision": "",
                   "error": result.reason}
        else:
            row = {"file": name, "status": "ok", "predicted": result.call, "probability": round(result.probability, 4),
                   "decision": result.decision, "set": "" if result.set is None else "|".join(result.set), "error": "",
                   "scale": str(result.scale or ""), "focus_blur_px": blur_cell(result.blur_px),
                   "network": result.network}
            for i, (label, p) in enumerate(result.top_k(self.classes, self.top_k), 1):
                row[f"top{i}"], row[f"p{i}"] = label, round(p, 4)
            if result.unusual is not None:  # None: no domain check
                row["domain_score"] = round(result.domain_score, 3)
                row["unusual"] = "yes" if result.unusual else "no"
        self.rows.append(row)
        return row

    def columns(self) -> list[str]:
        tops = [c for i in range(1, self.top_k + 1) for c in (f"top{i}", f"p{i}")]
        return ["file", "status", "predicted", "probability", *tops, "decision", "set", "domain_score", "unusual",
                "network", "scale", "focus_blur_px", "error"]

    @property
    def accepted_counts(self) -> list[dict]:
        """The differential count of the accepted cells alone."""
        return differential_count([r["predicted"] for r in self.classified if r["decision"] == "accepted"],
                                  self.classes)

    def count_rows(self) -> list[dict]:
        """The counts file's rows: the differential count of all classified cells, then of the accepted
        ones, then the cells per decision (percent of the classified cells)."""
        n = len(self.classified)
        return [*({"count": "all cells", "name": c["class"], "cells": c["cells"], "percent": c["percent"]}
                  for c in self.counts),
                *({"count": "accepted cells", "name": c["class"], "cells": c["cells"], "percent": c["percent"]}
                  for c in self.accepted_counts),
                *({"count": "decision", "name": d, "cells": k, "percent": round(100 * k / n, 1) if n else 0.0}
                  for d, k in self.decision_counts.items())]

    def write(self, out_csv: str | Path) -> tuple[Path, Path]:
        """``out_csv`` (one row per image) and ``<stem>_counts.csv``: the differential count of all cells and
        of the accepted ones, and the cells per decision (``count`` says which, ``name`` the class or
        decision)."""
        out_csv = write_csv(out_csv, self.columns(), self.rows)
        counts_csv = write_csv(out_csv.with_name(out_csv.stem + "_counts.csv"), ["count", "name", "cells", "percent"],
                               self.count_rows())
        return out_csv, counts_csv

    def warning(self) -> Optional[str]:
        """The one warning line for unusual images, or None."""
        if not self.unusual:
            return None
        return (f"warning: {len(self.unusual)} of {len(self.classified)} image(s) are unusual (domain_score above "
                f"{self.unusual_above:.2f}): {UNUSUAL_WARNING}")

    def summary(self) -> str:
        accepted = {c["class"]: c for c in self.accepted_counts}
        lines = [f"differential count of {len(self.classified)} classified cell(s) "
                 f"(and of the {self.decision_counts['accepted']} accepted):"]
        lines += [f"  {c['class']:<5}{c['cells']:>7}{c['percent']:>7.1f} %   ({accepted[c['class']]['cells']:>5}"
                  f"{accepted[c['class']]['percent']:>7.1f} %)" for c in self.counts]
        lines.append("decisions: " + ", ".join(f"{n} {d}" for d, n in self.decision_counts.items()) +
                     f" ({self.policy.describe()})")
        if self.errors:
            lines.append(f"{len(self.errors)} file(s) could not be read:")
            lines += [f"  {r['file']}: {r['error']}" for r in self.errors]
        return "\n".join(lines)


def predict_files(predictor: Predictor, files: Sequence[Path], *, batch_size: int = 32, launch: Optional[dict] = None,
                  keep: Optional[PartialFile] = None, progress: bool = False) -> Optional[dict[str, Result]]:
    """Results for ``files`` by file, with those ``keep`` read back from an interrupted run (only the rest
    are predicted), each new one appended to ``keep`` as it is made. Here, or shared out over Lightning
    DDP ranks with ``launch`` (``devices``, ``num_nodes``, ``accelerator``; each rank keeps its own
    partial file): then global rank 0 gets them all and the other ranks get None. Interrupted, the
    partial file stays and the console says how to finish."""
    done = dict(keep.done) if keep else {}
    todo = [f for f in files if str(f) not in done]
    try:
        if launch:
            # Lightning is imported only when ranks are launched: one process needs none of it
            from marrowscope.core.distributed import predict_distributed

            got = predict_distributed(predictor, todo, batch_size=batch_size, keep=keep, **launch)
            if got is None:
                return None
            done.update((str(f), r) for f, r in zip(todo, got))
            return done
        stream = predictor.predict_many(todo, batch_size=batch_size)
        if progress and len(todo) > batch_size:
            from tqdm import tqdm

            stream = tqdm(stream, total=len(todo), unit="img", desc="classifying")
        for f, r in zip(todo, stream):
            if keep:
                keep.add(r)
            done[str(f)] = r
        return done
    except BaseException:  # Ctrl-C or an error: what is finished stays, and the user is told where
        if keep:
            keep.close()
            if launch:  # each rank kept its own results
                print(f"interrupted: the ranks' finished results are kept in {keep.path}.rankK; run the same "
                      "command with --resume to finish", file=sys.stderr)
            elif keep.held():
                print(f"interrupted: {keep.held()} finished result(s) kept in {keep.path}; run the same command "
                      "with --resume to finish", file=sys.stderr)
        raise


def run_batch(predictor: Predictor, paths: Sequence[str | Path], out_csv: Optional[str | Path] = None,
              top_k: int = 3, batch_size: int = 32, progress: bool = False,
              launch: Optional[dict] = None, resume: bool = False) -> Optional[BatchResult]:
    """Classify files and folders (recursive); unreadable files are reported, the rest classified.

    With ``launch`` (``devices``, ``num_nodes``, ``accelerator``) the files are shared out over
    Lightning DDP ranks; the result (and the CSV) comes from global rank 0, other ranks get None.
    With ``out_csv`` each result is kept in ``OUT.partial`` as it is made (:mod:`marrowscope.core.partial`):
    ``resume`` finishes an interrupted run from it, and the CSV is the one an uninterrupted run writes.
    """
    files, missing = collect_images(paths)
    keep = PartialFile(out_csv, identity(predictor, "predict"), resume) if out_csv else None
    got = predict_files(predictor, files, batch_size=batch_size, launch=launch, keep=keep, progress=progress)
    if got is None:
        return None
    result = BatchResult.for_predictor(predictor, top_k)
    for item in [*missing, *(got[str(f)] for f in files)]:
        result.add(item)
    if out_csv:
        result.write(out_csv)
        keep.remove()
    return result


def classify(paths: Sequence[str | Path], model: Optional[str | Path] = None, *, top_k: int = 3, batch_size: int = 32,
             **settings) -> list[dict]:
    """Classify image files and folders (recursive) with a model folder (default: the bundled one): one
    dict per image with the columns of ``marrowscope predict``'s CSV (:data:`COLUMNS`), in input order; an
    unreadable file gets ``status`` "error" and its reason. ``settings``: :class:`Predictor`'s (``backend``,
    ``tta``, ``pixel_size``, ``review_below``, ...).

    Example::

        import marrowscope
        rows = marrowscope.classify(["cells/"])
        rows[0]["predicted"], rows[0]["decision"], rows[0]["set"]
    """
    result = run_batch(Predictor(model, **settings), paths, top_k=top_k, batch_size=batch_size)
    return [{c: row.get(c, "") for c in result.columns()} for row in result.rows]


def differential_count(labels: Iterable[str], classes: Sequence[str]) -> list[dict]:
    """Cells per class and percent of classified cells, in class order, zeros included."""
    counts = Counter(labels)
    total = sum(counts[c] for c in classes)
    return [{"class": c, "cells": counts[c], "percent": round(100 * counts[c] / total, 1) if total else 0.0}
            for c in classes]

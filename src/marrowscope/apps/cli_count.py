"""``marrowscope count`` (whole fields to a differential) and ``marrowscope train-detector``."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from marrowscope.apps.cli_args import inference_flags

COUNT_HELP = """\
writes into --out:
  cells.csv    one row per detected white cell: field, cell (its number on the overlay), x0 y0 x1 y1 (its
               box, in the field's pixels), detector_score, counted (no: cut by the frame's edge), note,
               then the columns of `marrowscope predict` for the cell; a field without white cells or
               that could not be read is one row that says so
  count.csv    the differential: per class, cells, percent and its 95% interval (Wilson: low, high), of
               the identifiable cells (NIF: of all counted cells)
  count.json   the same, with the cells counted against --target, the cells left for review, and
               advisories (for example: a blast interval that straddles 5, 10 or 20%)
  overlays/    one PNG per field: numbered boxes in their class's colour, a legend; dashed grey boxes are
               cells cut by the edge, a second inner box marks a cell for review
"""


def add_count(sub) -> None:
    s = sub.add_parser("count", help="find the white cells in whole fields, classify them, and give the "
                       "differential with 95%% intervals", formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=COUNT_HELP)
    s.add_argument("paths", nargs="+", help="field images, folders (searched recursively) or zips of them")
    s.add_argument("--out", required=True, help="folder for cells.csv, count.csv, count.json and overlays/")
    s.add_argument("--target", type=int, default=200, help="cells to count: 200 in blood, 500 in marrow "
                   "(an advisory says when fewer were counted)")
    s.add_argument("--detector", default="auto", choices=["auto", "network", "classical"],
                   help="auto: the model folder's trained detector where it has one, else the classical one "
                        "(a threshold on the nucleus stain)")
    s.add_argument("--top-k", type=int, default=3)
    s.add_argument("--no-overlays", action="store_true", help="write the CSVs and JSON only")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    inference_flags(s)
    s.set_defaults(func=cmd_count)


def cmd_count(a) -> None:
    from marrowscope.core.count import count_fields, gather_fields
    from marrowscope.core.detect import load_detector
    from marrowscope.core.predict import Predictor

    predictor = Predictor(a.model, backend=a.backend, tta=a.tta, pixel_size=a.pixel_size)
    detector = load_detector(predictor.model_dir, a.detector)
    with tempfile.TemporaryDirectory(prefix="marrowscope-count-") as work:
        files, names, problems = gather_fields(a.paths, Path(work))
        count = count_fields(predictor, detector, files, names, problems, target=a.target, pixel_size=a.pixel_size,
                             top_k=a.top_k, progress=not a.quiet)
        summary = count.write(a.out, predictor, overlays=not a.no_overlays)
    print(count_report(summary, detector.name))
    for u in summary["unreadable"]:
        print(f"skipped {u['field']}: {u['reason']}", file=sys.stderr)
    print(f"wrote {Path(a.out) / 'cells.csv'}, count.csv, count.json" + ("" if a.no_overlays else " and overlays/") +
          " (`marrowscope count --help` explains each file)")


def count_report(s: dict, detector: str) -> str:
    """The differential as the console shows it: a table, then the advisories."""
    lines = [f"{s['fields']} field(s), {s['cells_detected']} white cell(s) found ({detector} detector), "
             f"{s['cells_counted']} counted ({s['cells_not_counted_edge']} cut by an edge not counted), "
             f"{s['cells_for_review']} for review",
             f"differential of {s['identifiable_cells']} identifiable cell(s), with 95% intervals:"]
    lines += [f"  {r['class']:<5}{r['cells']:>6}{r['percent']:>7.1f} %   ({r['low']:.1f}-{r['high']:.1f})"
              + ("  of all counted cells" if r["of"] != "identifiable cells" else "") for r in s["differential"]]
    lines += [f"advice: {x}" for x in s["advisories"]]
    return "\n".join(lines)


def add_train_detector(sub) -> None:
    s = sub.add_parser("train-detector", help="train the white-cell detector on boxed fields (YOLO layout)")
    s.add_argument("data", nargs="?", default="../shared/data/blood-fields",
                   help="folder with images/{train,val}/ and labels/{train,val}/ (default: %(default)s)")
    s.add_argument("--out", required=True, help="the detector folder, e.g. MODEL/detector (count finds it there)")
    s.add_argument("--arch", default="tf_efficientnet_lite0", help="timm backbone (ImageNet weights offline: Lite0-2)")
    s.add_argument("--epochs", type=int, default=16)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--lr", type=float, default=5e-4)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)  # tests: a few frames per split
    s.add_argument("--no-resume", action="store_true", help="start again rather than resume from OUT.ckpt/")
    s.set_defaults(func=cmd_train_detector)


def cmd_train_detector(a) -> None:
    from marrowscope.fit.detection import train_detector

    out = train_detector(a.data, a.out, arch=a.arch, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                         limit=a.limit, resume=not a.no_resume)
    import json

    cfg = json.loads((out / "config.json").read_text())
    v = cfg["validation"]
    print(f"wrote {out}: AP50 {v['ap50']:.3f} on {v['frames']} validation frames, recall "
          f"{v['recall_at_precision_95']:.3f} at precision >= 0.95 (score threshold {cfg['threshold']:.3f})")

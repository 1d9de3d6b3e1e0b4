"""Choose the second reading's zoom (:meth:`marrowscope.core.predict.Predictor.read_again`) on another
lab's labelled images: the images the domain check flags are read again with the cell drawn that much
smaller, and the two readings averaged.

Chosen on the other lab's adaptation split only (the first ``CHOICE_PER_CLASS`` images of each class by
sorted file name, as other-lab-pbc's README sets aside): the zoom of highest accuracy there, the lowest
class recall breaking ties, then the zoom closest to 1. Measured for every zoom: that split, the other
images and all of them; and, as a check of what a smaller reading does to blasts, the model's own test
images (its manifest's test split) with every one read twice. Neither check takes part in the choice.
Nothing is trained; the network and the domain check stay as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from sklearn.metrics import f1_score

from marrowscope.core.artifacts import resolve_model_dir, write_settings
from marrowscope.core.data import load_samples
from marrowscope.core.errors import MarrowscopeError, Unreadable
from marrowscope.core.images import is_image_path
from marrowscope.core.predict import Predictor

CHOICE_PER_CLASS = 20
ZOOMS = (0.9, 0.8, 0.7, 0.6)


def readings(p: Predictor, files: list[Path], zoom: float) -> tuple[np.ndarray, list[int]]:
    """([N, C] probabilities of each readable image's first reading (zoom 1) or, for a zoom below 1, of both
    averaged; the indices of those images in ``files``). ``p`` reads each image once on its own."""
    first = [(i, r) for i, r in enumerate(p.stream_logits(files)) if not isinstance(r, Unreadable)]
    again = [None] * len(first)
    if zoom != 1.0:  # every image read again, as if the domain check flagged it
        again = p.read_again([files[i] for i, _ in first], [r.scale for _, r in first], None, zoom=zoom)
    probs = [p.probs(r.logits, a) for (_, r), a in zip(first, again)]
    return (np.stack(probs) if probs else np.zeros((0, len(p.classes)))), [i for i, _ in first]


def _score(probs: np.ndarray, y: np.ndarray, mask: np.ndarray, classes: list[str]) -> dict:
    if not mask.any():
        return {"accuracy": float("nan"), "min_recall": float("nan"), "recall": {}}
    pred = probs.argmax(1)
    recall = {classes[k]: float((pred[mask & (y == k)] == k).mean()) for k in sorted(set(y[mask]))}
    return {"accuracy": float((pred[mask] == y[mask]).mean()), "min_recall": min(recall.values()), "recall": recall}


def choose_second_zoom(model: Optional[str | Path], other: str | Path, zooms: Sequence[float] = ZOOMS,
                       data_root: Optional[str] = None, write: bool = False, report=print) -> dict:
    """Measure every zoom (1.0: read once) on ``other``'s class folders and choose one; ``write`` stores it
    in the model folder. ``report`` gets one line per zoom. Returns the rows, the choice and how."""
    model_dir, other = resolve_model_dir(model), Path(other)
    p = Predictor(model_dir, second_reading=False)  # the first reading alone; readings() adds the second
    if p.unusual_above is None or not p.info.scale:
        raise MarrowscopeError(f"{model_dir} has no domain check or no training scale: run "
                               "`marrowscope fit-checks` on it first.")
    files, y, choice = [], [], []
    for c in sorted(d.name for d in other.iterdir() if d.is_dir() and d.name in p.classes) if other.is_dir() else []:
        for i, f in enumerate(sorted(f for f in (other / c).iterdir() if is_image_path(f))):
            files.append(f)
            y.append(p.classes.index(c))
            choice.append(i < CHOICE_PER_CLASS)
    if not files:
        raise MarrowscopeError(f"'{other}' holds no class folders of images of this model's classes.")
    y, choice = np.array(y), np.array(choice)
    try:
        own = [s for s in load_samples(model_dir / "manifest.csv", data_root=data_root)[0] if s.split == "test"]
    except MarrowscopeError as exc:
        own = []
        report(f"no check on the model's own test images: {exc}")
    y_own, blast = np.array([p.classes.index(s.label) for s in own]), p.classes.index("BLA")
    rows = []
    for zoom in [1.0, *zooms]:
        probs, kept = readings(p, files, zoom)
        row = {"zoom": zoom, **{k: _score(probs, y[kept], m[kept], p.classes) for k, m in
                                (("choice", choice), ("rest", ~choice), ("all", np.ones_like(choice)))}}
        probs, kept = readings(p, [s.path for s in own], zoom) if own else (np.zeros((0, 1)), [])
        pred, truth = probs.argmax(1), y_own[kept]
        row["own_test"] = {"images": len(kept), "macro_f1": float(f1_score(truth, pred, average="macro")) if kept
                           else float("nan"), "blast_recall": float((pred[truth == blast] == blast).mean())
                           if (truth == blast).any() else float("nan")}
        rows.append(row)
        report(f"zoom {zoom}: " + " | ".join(f"{k} {row[k]['accuracy']:.3f} (lowest class {row[k]['min_recall']:.2f})"
                                             for k in ("choice", "rest", "all")) +
               f" | own test, every image read so: macro-F1 {row['own_test']['macro_f1']:.3f}, blast recall "
               f"{row['own_test']['blast_recall']:.3f}")
    best = max(rows, key=lambda r: (r["choice"]["accuracy"], r["choice"]["min_recall"], r["zoom"]))
    c, r = best["choice"], best["rest"]
    how = (f"chosen among {[1.0, *zooms]} on {other.name}'s adaptation split ({choice.sum()} images, the first "
           f"{CHOICE_PER_CLASS} per class): accuracy {c['accuracy']:.3f}, against {rows[0]['choice']['accuracy']:.3f} "
           f"read once; its other {(~choice).sum()} images: {r['accuracy']:.3f} (read once "
           f"{rows[0]['rest']['accuracy']:.3f}), per class {', '.join(f'{k} {v:.2f}' for k, v in r['recall'].items())}")
    if write:
        write_settings(model_dir, second_reading={"zoom": best["zoom"], "how": how} if best["zoom"] != 1.0 else None)
    return {"rows": rows, "zoom": best["zoom"], "how": how, "model_dir": model_dir}

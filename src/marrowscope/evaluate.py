"""Metrics report of a model folder on a named split of a dataset, never on images it trained on
without saying so."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, log_loss,
                             precision_recall_fscore_support)

from marrowscope.artifacts import check_classes
from marrowscope.data import Sample, load_samples, manifest_rows, sha256_of
from marrowscope.errors import MarrowscopeError
from marrowscope.predict import Predictor

SPLIT_CHOICES = ("test", "val", "train", "all")


def calibration_bins(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> tuple[float, list[dict]]:
    """Expected calibration error of the top probability, and the bins of a reliability diagram."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = (pred == y).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    bins, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        n = int(m.sum())
        acc = float(correct[m].mean()) if n else 0.0
        c = float(conf[m].mean()) if n else 0.0
        ece += n / max(len(y), 1) * abs(acc - c)
        bins.append({"lo": float(lo), "hi": float(hi), "count": n, "accuracy": acc, "confidence": c})
    return float(ece), bins


def compute_metrics(probs: np.ndarray, y: np.ndarray, classes: Sequence[str]) -> dict:
    """All metrics of one evaluation; ``y`` are class indices into ``classes``."""
    labels = list(range(len(classes)))
    pred = probs.argmax(axis=1)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    ece, bins = calibration_bins(probs, y)
    return {
        "images": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
        "log_loss": float(log_loss(y, np.clip(probs, 1e-7, 1), labels=labels)),
        "ece": ece,
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "reliability_bins": bins,
    }


def format_report(m: dict, classes: Sequence[str]) -> str:
    lines = [m["description"], "",
             f"{'class':<7}{'precision':>10}{'recall':>8}{'F1':>8}{'support':>9}"]
    for c in classes:
        r = m["per_class"][c]
        lines.append(f"{c:<7}{r['precision']:>10.3f}{r['recall']:>8.3f}{r['f1']:>8.3f}{r['support']:>9d}")
    lines += ["", f"accuracy {m['accuracy']:.4f}  balanced accuracy {m['balanced_accuracy']:.4f}  "
                  f"macro-F1 {m['macro_f1']:.4f}  weighted F1 {m['weighted_f1']:.4f}",
              f"log loss {m['log_loss']:.4f}  expected calibration error {m['ece']:.4f}"]
    if m.get("overlap_with_training"):
        lines.append(f"WARNING: {m['overlap_with_training']} of these images are in the model's training split.")
    return "\n".join(lines)


def _training_hashes(model_dir: Path) -> set[str]:
    manifest = model_dir / "manifest.csv"
    if not manifest.is_file():
        return set()
    return {r["sha256"] for r in manifest_rows(manifest)[1] if r.get("split") == "train" and r.get("sha256")}


def evaluate(predictor: Predictor, data: str | Path, split: str = "test", out_dir: Optional[str | Path] = None,
             seed: int = 0, val: float = 0.15, test: float = 0.15, data_root: Optional[str] = None,
             batch_size: int = 32, launch: Optional[dict] = None) -> Optional[dict]:
    """Predict every image of ``split`` and write ``metrics.json``, ``predictions.csv`` and figures.

    With ``launch`` (``devices``, ``num_nodes``, ``accelerator``) prediction runs over Lightning
    DDP ranks and only global rank 0 returns the metrics (the others return None).

    The report names the data, split and image count, and how many evaluated images the model
    saw in training (by sha256 against the model folder's manifest).
    """
    if split not in SPLIT_CHOICES:
        raise MarrowscopeError(f"unknown split '{split}'; choose one of {', '.join(SPLIT_CHOICES)}.")
    samples, skipped = load_samples(data, None, val=val, test=test, seed=seed, data_root=data_root)
    chosen: list[Sample] = samples if split == "all" else [s for s in samples if s.split == split]
    if not chosen:
        raise MarrowscopeError(f"the {split} split of '{data}' holds no images.")
    classes = predictor.classes
    check_classes(predictor.info, {s.label for s in chosen}, f"'{data}'")
    index = {c: i for i, c in enumerate(classes)}
    if launch:  # shared out over Lightning DDP ranks; rank 0 reports
        from marrowscope.distributed import predict_distributed

        work = Path(out_dir or ".") / "prediction_parts"
        results = predict_distributed(predictor, [s.path for s in chosen], work, batch_size=batch_size,
                                      **launch)
        if results is None:
            return None
    else:
        results = list(predictor.predict_many([s.path for s in chosen], batch_size=batch_size))
    failed = [(s, r.error) for s, r in zip(chosen, results) if r.error]
    kept = [(s, r) for s, r in zip(chosen, results) if r.error is None]
    probs = np.stack([r.probs for _, r in kept])
    y = np.array([index[s.label] for s, _ in kept])
    m = compute_metrics(probs, y, classes)
    trained = _training_hashes(predictor.model_dir)
    m["overlap_with_training"] = sum(1 for s, _ in kept if (s.sha256 or sha256_of(s.path)) in trained)
    m.update({
        "data": str(data), "split": split, "model": str(predictor.model_dir), "backend": predictor.backend,
        "unreadable": [{"path": str(s.path), "reason": e} for s, e in failed + [(k.path, k.reason) for k in skipped]],
        "description": f"{len(kept)} images of the '{split}' split of {data}, model {predictor.model_dir} "
                       f"({predictor.info.architecture}).",
    })
    if out_dir:
        from marrowscope.plots import plot_confusion, plot_reliability

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(m, indent=2))
        with open(out / "predictions.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "predicted", "confidence", *classes])
            for (s, r) in kept:
                w.writerow([s.path, s.label, classes[int(r.probs.argmax())], f"{r.probs.max():.4f}",
                            *(f"{p:.4f}" for p in r.probs)])
        title = f"{split} split, {len(kept)} images"
        plot_confusion(np.array(m["confusion_matrix"]), classes, out / "confusion_matrix.png", title)
        plot_reliability(m["reliability_bins"], m["ece"], out / "reliability.png", title)
    return m

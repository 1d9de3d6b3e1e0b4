"""Metrics report of a model folder on a named split of a dataset, never on images it trained on
without saying so."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
)

from marrowscope.core.artifacts import check_classes
from marrowscope.core.batch import blur_cell, predict_files
from marrowscope.core.config import TEST_FRACTION, VAL_FRACTION
from marrowscope.core.csvfiles import write_csv
from marrowscope.core.data import SPLIT_CHOICES, Sample, load_samples, sha256_of
from marrowscope.core.errors import MarrowscopeError, Unreadable
from marrowscope.core.manifest import manifest_rows
from marrowscope.core.partial import PartialFile, identity
from marrowscope.core.policy import decision_metrics
from marrowscope.core.predict import Predictor

N_BINS = 15


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    """ECE of the top probability (torchmetrics, L1 over equal-width bins)."""
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    return float(multiclass_calibration_error(torch.as_tensor(probs, dtype=torch.float32), torch.as_tensor(y),
                                              num_classes=probs.shape[1], n_bins=n_bins, norm="l1"))


def reliability_bins(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> list[dict]:
    """Accuracy and mean confidence per confidence bin: the data of a reliability diagram."""
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == y)
    edges = np.linspace(0, 1, n_bins + 1)
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        n = int(m.sum())
        bins.append({"lo": float(lo), "hi": float(hi), "count": n, "accuracy": float(correct[m].mean()) if n else 0.0,
                     "confidence": float(conf[m].mean()) if n else 0.0})
    return bins


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """The mean recall over the classes the images hold. scikit-learn warns when a prediction names a class
    the images do not hold, which is ordinary on a lab's own subset of the classes; the figure is the one
    wanted, so the warning is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(y, pred))


def compute_metrics(probs: np.ndarray, y: np.ndarray, classes: Sequence[str], pred: Optional[np.ndarray] = None
                    ) -> dict:
    """All metrics of one evaluation; ``y`` are class indices into ``classes``, ``pred`` the predicted ones
    (default: the most probable class; the review policy's blast weight can call a blast below the top)."""
    labels = list(range(len(classes)))
    present = sorted(set(y.tolist()))  # a set without some classes (another lab's) averages over its own
    pred = probs.argmax(axis=1) if pred is None else pred
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return {
        "images": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": _balanced_accuracy(y, pred),
        "macro_f1": float(f1_score(y, pred, labels=present, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
        "log_loss": float(log_loss(y, np.clip(probs, 1e-7, 1), labels=labels)),
        "ece": expected_calibration_error(probs, y),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "reliability_bins": reliability_bins(probs, y),
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
    d = m.get("decisions")
    if d:
        acc = "" if d["accepted_accuracy"] is None else f", {d['accepted_accuracy']:.1%} of them correct"
        lines.append(f"decisions ({d['policy']}): {d['accepted_share']:.1%} accepted{acc}; {d['review_share']:.1%} "
                     f"review; {d['possible-blast_share']:.1%} possible blast")
        if "blast_catch" in d:
            false = d["non_blasts_called_blast"]
            lines.append(f"blasts predicted BLA: {d['blast_recall']:.1%} of {d['blasts']}" +
                         ("" if false is None else f"; other cells called blasts: {false:.1%} of them"))
            lines.append(f"blasts predicted BLA or flagged possible-blast: {d['blast_catch']:.1%} of {d['blasts']} "
                         f"({d['blasts_missed_unflagged']} not; of these, {d['blasts_accepted_as_other']} accepted as "
                         "another cell type, the rest sent to review)")
    if d and "set_coverage" in d:
        lines.append(f"prediction sets: {d['set_coverage']:.1%} hold the true class, {d['set_mean_size']:.2f} "
                     f"classes on average, {d['set_single_share']:.1%} a single class ({d['set_cells']} images the "
                     "domain check finds usual)")
    if "unusual_share" in m:
        lines.append(f"domain check: {m['unusual_share']:.1%} of the images look unlike the training images")
    if "home_share" in m:
        lines.append(f"{m['home_share']:.1%} of the images were read by the model this folder was adapted from "
                     "(like its own training images), the rest by the adapted network")
    if m.get("overlap_with_training"):
        lines.append(f"WARNING: {m['overlap_with_training']} of these images are in the model's training split.")
    return "\n".join(lines)


def _training_hashes(model_dir: Path) -> set[str]:
    manifest = model_dir / "manifest.csv"
    if not manifest.is_file():
        return set()
    return {r["sha256"] for r in manifest_rows(manifest) if r.get("split") == "train" and r.get("sha256")}


def evaluate(predictor: Predictor, data: str | Path, split: str = "test", out_dir: Optional[str | Path] = None,
             seed: int = 0, val: float = VAL_FRACTION, test: float = TEST_FRACTION, data_root: Optional[str] = None,
             batch_size: int = 32, launch: Optional[dict] = None, resume: bool = False) -> Optional[dict]:
    """Predict every image of ``split`` and write ``metrics.json``, ``predictions.csv`` and figures.

    With ``launch`` (``devices``, ``num_nodes``, ``accelerator``) prediction runs over Lightning
    DDP ranks and only global rank 0 returns the metrics (the others return None). With ``out_dir`` each
    result is kept in ``predictions.csv.partial`` there as it is made; ``resume`` finishes from it.

    The report names the data, split and image count, and how many evaluated images the model
    saw in training (by sha256 against the model folder's manifest).
    """
    if split not in SPLIT_CHOICES:
        raise MarrowscopeError(f"unknown split '{split}'; choose one of {', '.join(SPLIT_CHOICES)}.")
    samples, skipped = load_samples(data, None, val=val, test=test, seed=seed, data_root=data_root)
    chosen: list[Sample] = samples if split == "all" else [s for s in samples if s.split == split]
    if not chosen:
        raise MarrowscopeError(f"the {split} split of '{data}' holds no images.")
    check_classes(predictor.info, {s.label for s in chosen}, f"'{data}'")
    keep = PartialFile(Path(out_dir) / "predictions.csv", identity(predictor, "evaluate"), resume) if out_dir else None
    got = predict_files(predictor, [s.path for s in chosen], batch_size=batch_size, launch=launch, keep=keep)
    if got is None:  # a DDP rank other than 0
        return None
    pairs = [(s, got[str(s.path)]) for s in chosen]
    kept = [(s, r) for s, r in pairs if not isinstance(r, Unreadable)]
    unreadable = [*skipped, *(r for _, r in pairs if isinstance(r, Unreadable))]
    if not kept:
        raise MarrowscopeError(f"none of the {len(chosen)} images of the {split} split of '{data}' could be read "
                               f"(first: {unreadable[0].source}: {unreadable[0].reason}).")
    m = _report(predictor, data, split, kept, unreadable)
    if out_dir:
        _write(m, kept, predictor.classes, Path(out_dir))
        keep.remove()
    return m


def _report(predictor: Predictor, data, split: str, kept: list, unreadable: list[Unreadable]
            ) -> dict:
    """The metrics of the readable images' predictions, and of the model folder's review policy on them."""
    classes, policy = predictor.classes, predictor.policy
    index = {c: i for i, c in enumerate(classes)}
    probs = np.stack([r.probs for _, r in kept])
    y = np.array([index[s.label] for s, _ in kept])
    pred = np.array([index[r.call] for _, r in kept])
    decisions = np.array([r.decision for _, r in kept], dtype=object)
    usual = np.array([not r.unusual for _, r in kept])  # the sets' guarantee holds for these
    # an unusual image has no set; those rows are left out of the sets' figures by ``usual``
    in_set = None if policy.set_thresholds is None else \
        np.array([[c in (r.set or ()) for c in classes] for _, r in kept])
    m = compute_metrics(probs, y, classes, pred)
    # the review policy on these cells: accepted share and accuracy, blasts caught
    m["decisions"] = {**decision_metrics(decisions, pred, y, classes, in_set, usual), "policy": policy.describe()}
    trained = _training_hashes(predictor.model_dir)
    m["overlap_with_training"] = sum(1 for s, _ in kept if (s.sha256 or sha256_of(s.path)) in trained)
    settings = f"{predictor.backend}, TTA {'on' if predictor.tta else 'off'}, temperature {predictor.temperature:g}"
    flags = [r.unusual for _, r in kept if r.unusual is not None]
    if flags:
        m["unusual_share"] = float(np.mean(flags))
        m["domain_threshold"] = predictor.unusual_above
    if predictor.home is not None:  # an adapted folder: how many calls its home model kept
        m["home_share"] = float(np.mean([r.network == "home" for _, r in kept]))
    m.update({
        "data": Path(data).name, "split": split, "model": predictor.model_dir.name, "backend": predictor.backend,
        "tta": predictor.tta, "temperature": predictor.temperature,
        "unreadable": [u.as_dict() for u in unreadable],
        "description": f"{len(kept)} images of the '{split}' split of {Path(data).name}, model "
                       f"{predictor.model_dir.name} ({predictor.info.architecture}; {settings}).",
    })
    return m


def _domain_cells(r) -> tuple[str, str]:
    return ("", "") if r.unusual is None else (f"{r.domain_score:.3f}", "yes" if r.unusual else "no")


def _write(m: dict, kept: list, classes: Sequence[str], out: Path) -> None:
    from marrowscope.report.plots import plot_confusion, plot_reliability

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    # paths relative to the data's root: the report reads the same on every machine
    write_csv(out / "predictions.csv",
              ["path", "label", "predicted", "confidence", "decision", "set", *classes, "domain_score", "unusual",
               "network", "scale", "focus_blur_px"],
              ([s.rel or s.path.name, s.label, r.call, f"{r.probability:.4f}", r.decision, "|".join(r.set or []),
                *(f"{p:.4f}" for p in r.probs), *_domain_cells(r), r.network, str(r.scale or ""),
                blur_cell(r.blur_px)]
               for s, r in kept))
    title = f"{m['split']} split, {len(kept)} images"
    plot_confusion(np.array(m["confusion_matrix"]), classes, out / "confusion_matrix.png", title)
    plot_reliability(m["reliability_bins"], m["ece"], out / "reliability.png", title)

"""Figures only: training curves, class distribution, confusion matrix, reliability diagram.

Built with matplotlib's object-oriented ``Figure`` API, never ``pyplot``: pyplot keeps global
state, and the app draws from several Gradio worker threads at once.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _subplots(nrows: int = 1, ncols: int = 1, figsize=(6, 4)):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols)


def count_figure(counts: list[dict]):
    """The differential count: percent of classified cells per class, cells on each bar."""
    fig, ax = _subplots(figsize=(7, 3.5))
    bars = ax.bar([c["class"] for c in counts], [c["percent"] for c in counts], color="#4c72b0")
    ax.bar_label(bars, labels=[f"{c['cells']}" for c in counts])
    ax.set_ylabel("% of classified cells")
    ax.set_title("differential count")
    fig.tight_layout()
    return fig


def history_figure(history_csv: str | Path):
    """Loss, accuracy and macro-F1 per epoch, train and validation."""
    with open(history_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    epochs = [int(r["epoch"]) for r in rows]
    fig, axes = _subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title in zip(axes, ("loss", "acc", "f1"), ("loss", "accuracy", "macro-F1")):
        for stage in ("train", "val"):
            ax.plot(epochs, [float(r[f"{stage}_{key}"]) for r in rows], marker="o", ms=3, label=stage)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def plot_history(history_csv: str | Path, out: str | Path) -> Path:
    return _save(history_figure(history_csv), out)


def _colours(n: int) -> list:
    """n distinct colours: tab10 or tab20 where they suffice, else evenly spaced hues (any class list)."""
    if n <= 20:
        return list(colormaps["tab10" if n <= 10 else "tab20"].colors[:n])
    return [colormaps["hsv"](k / n) for k in range(n)]


def _bars(ax, counts: dict[str, int], title: str) -> None:
    ax.bar_label(ax.bar(list(counts), list(counts.values()), color=_colours(len(counts))))
    ax.set_ylabel("images")
    ax.set_title(title)


def _pie(ax, counts: dict[str, int], title: str) -> None:
    if sum(counts.values()) > 0:
        ax.pie(list(counts.values()), labels=list(counts), autopct="%1.1f%%",
               colors=_colours(len(counts)))
    ax.set_title(title)


def distribution_figure(counts: dict[str, int], title: str = "images per class"):
    """Bar chart and pie chart of images per class, side by side (the app's Data view)."""
    fig, (bar, pie) = _subplots(1, 2, figsize=(12, 4.5))
    _bars(bar, counts, title)
    _pie(pie, counts, "share of images")
    return fig


def plot_distribution(counts: dict[str, int], out_dir: str | Path, title: str = "images per class") -> list[Path]:
    """Write ``class_bar.png`` and ``class_pie.png``."""
    out_dir = Path(out_dir)
    fig, ax = _subplots(figsize=(7, 4.5))
    _bars(ax, counts, title)
    paths = [_save(fig, out_dir / "class_bar.png")]
    fig, ax = _subplots(figsize=(6, 6))
    _pie(ax, counts, title)
    return paths + [_save(fig, out_dir / "class_pie.png")]


def confusion_figure(cm: np.ndarray, classes: Sequence[str], title: str = ""):
    """Counts (left) and row-normalised recall (right)."""
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, axes = _subplots(1, 2, figsize=(13, 5.5))
    for ax, mat, fmt, sub in ((axes[0], cm, "d", "counts"), (axes[1], norm, ".2f", "row-normalised (recall)")):
        ax.imshow(mat, cmap="Blues")
        ax.set_xticks(range(len(classes)), classes, rotation=45)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} {sub}".strip())
        hi = mat.max() if mat.size else 0
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                ax.text(j, i, format(mat[i, j], fmt), ha="center", va="center", fontsize=8,
                        color="white" if mat[i, j] > hi / 2 else "black")
    return fig


def plot_confusion(cm: np.ndarray, classes: Sequence[str], out: str | Path, title: str = "") -> Path:
    return _save(confusion_figure(cm, classes, title), out)


def reliability_figure(bins: list[dict], ece: float, title: str = ""):
    """Accuracy against confidence per bin, with the diagonal of perfect calibration."""
    fig, ax = _subplots(figsize=(5.5, 5))
    centers = [(b["lo"] + b["hi"]) / 2 for b in bins if b["count"]]
    ax.bar(centers, [b["accuracy"] for b in bins if b["count"]], width=1 / len(bins), edgecolor="k",
           alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title} ECE = {ece:.3f}".strip())
    ax.legend(loc="upper left")
    return fig


def plot_reliability(bins: list[dict], ece: float, out: str | Path, title: str = "") -> Path:
    return _save(reliability_figure(bins, ece, title), out)

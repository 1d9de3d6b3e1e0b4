"""How well white cells are found: AP at IoU 0.5 and recall at precision ≥ 0.95, by torchmetrics'
MeanAveragePrecision (COCO's protocol, through pycocotools), on whole frames in their own pixels.

Detection runs exactly as counting runs it (the frame's scale, tiles, the owning tile), so these are the
figures of ``marrowscope count``'s first step, not of the network on prepared tiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from marrowscope.core.detect import ASSUMED_UM, field_scale, find_cells
from marrowscope.core.images import decode_image

PRECISION_AT_LEAST = 0.95


@dataclass
class Scored:
    """One frame: its size, its ground-truth boxes [G, 4] and every detection [K, 4] with its score [K]."""

    size: tuple[int, int]
    truth: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray


def score_frames(detector, frames: Sequence, pixel_size: Optional[float] = None, assumed_um: float = ASSUMED_UM
                 ) -> list[Scored]:
    """Every detection of ``detector`` on each frame (:class:`marrowscope.fit.detection.Frame`-like: path,
    boxes, size), at any score (threshold 0), for the metrics below."""
    out = []
    for f in frames:
        image = decode_image(f.path)
        found = find_cells(detector, image, field_scale(image, pixel_size, assumed_um), threshold=0.0)
        out.append(Scored(f.size, np.asarray(f.boxes, np.float32).reshape(-1, 4),
                          np.asarray([[b.x0, b.y0, b.x1, b.y1] for b in found], np.float32).reshape(-1, 4),
                          np.asarray([b.score for b in found], np.float32)))
    return out


def detection_metrics(scored: Sequence[Scored]) -> dict:
    """AP50, the highest recall at precision ≥ 0.95 and the score that reaches it, and the counts."""
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_thresholds=[0.5], extended_summary=True)
    metric.update([{"boxes": torch.from_numpy(s.boxes), "scores": torch.from_numpy(s.scores),
                    "labels": torch.ones(len(s.boxes), dtype=torch.int64)} for s in scored],
                  [{"boxes": torch.from_numpy(s.truth), "labels": torch.ones(len(s.truth), dtype=torch.int64)}
                   for s in scored])
    res = metric.compute()
    # [T=1, R=101 recall points, K=1 class, A=all areas, M=largest max-detections]: COCO's interpolated curve
    precision = res["precision"][0, :, 0, 0, -1].numpy()
    scores = res["scores"][0, :, 0, 0, -1].numpy()
    recalls = np.linspace(0, 1, 101)
    ok = np.flatnonzero(precision >= PRECISION_AT_LEAST)
    at = int(ok[-1]) if len(ok) else None
    return {"frames": len(scored), "cells": int(sum(len(s.truth) for s in scored)),
            "ap50": round(float(res["map_50"]), 4),
            "recall_at_precision_95": round(float(recalls[at]), 3) if at is not None else 0.0,
            "score_at_precision_95": round(float(scores[at]), 4) if at is not None else None}


def choose_threshold(scored: Sequence[Scored]) -> tuple[float, dict]:
    """The score threshold with the highest recall at precision ≥ 0.95 on these frames, and the metrics."""
    m = detection_metrics(scored)
    return (m["score_at_precision_95"] if m["score_at_precision_95"] is not None else 0.5), m


def whole_cells(scored: Sequence[Scored], margin: float = 3.0) -> list[Scored]:
    """The same frames with only what ``count`` counts: ground-truth boxes and detections that stay
    ``margin`` px clear of the frame's edge (a cell cut by the edge is listed, never counted)."""
    def clear(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        w, h = size
        return ((boxes[:, 0] > margin) & (boxes[:, 1] > margin) & (boxes[:, 2] < w - margin)
                & (boxes[:, 3] < h - margin))

    out = []
    for s in scored:
        keep = clear(s.boxes, s.size)
        out.append(Scored(s.size, s.truth[clear(s.truth, s.size)], s.boxes[keep], s.scores[keep]))
    return out


def by_frame_size(scored: Sequence[Scored]) -> dict[str, dict]:
    """:func:`detection_metrics` apart for each frame size (each size is one source lab here)."""
    sizes = sorted({s.size for s in scored})
    return {f"{w}x{h}": detection_metrics([s for s in scored if s.size == (w, h)]) for w, h in sizes}

"""Finding white cells in fields: the trained detector against the classical baseline, then counting.

    python bench/detection.py [--model models/default] [--fields ../shared/data/blood-fields]
                              [--out docs/results/detection.json]

Prints and writes (all on data no detector or classifier trained on):
1. Detection on blood-fields' test split (117 peripheral-blood frames, 127 white cells; not marrow),
   white cells at IoU 0.5, by torchmetrics' MeanAveragePrecision: AP50, and the highest recall at
   precision >= 0.95; overall and apart for each frame size (each size is one source lab). Then, at the
   shipped score threshold, precision and recall as ``count`` finds cells. Then the same for whole
   cells only (boxes clear of the frame's edge, in the labels and in the detections): what ``count``
   counts.
2. Marrow sanity check: the 525 test crops of the model's manifest (bone-marrow-7's test split), each
   given to ``count`` as a field; the share where a counted cell covers the image centre (and where the
   detector alone, at its field threshold, has a box there).
3. End to end: other-lab-pbc's 500 images given as fields to ``count``; the share where the white cell
   is found (a counted cell), and the accuracy of the call on it against the label, beside ``predict``
   on the same images as crops.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from marrowscope.core.artifacts import resolve_model_dir
from marrowscope.core.count import FieldCounter
from marrowscope.core.data import scan_folder
from marrowscope.core.detect import Detector, NucleusDetector, field_scale, find_cells
from marrowscope.core.images import decode_image
from marrowscope.core.manifest import read_manifest
from marrowscope.core.predict import Predictor
from marrowscope.core.samples import default_data_dir
from marrowscope.fit.detection import read_frames
from marrowscope.report.detection import by_frame_size, detection_metrics, score_frames, whole_cells


def at_threshold(scored, threshold: float) -> dict:
    """Precision and recall of the boxes at or above ``threshold`` (greedy IoU 0.5 matching, by torchvision)."""
    import torch
    from torchvision.ops import box_iou

    tp = fp = fn = 0
    for s in scored:
        keep = s.scores >= threshold
        boxes = torch.from_numpy(s.boxes[keep][np.argsort(-s.scores[keep])])
        truth = torch.from_numpy(s.truth)
        used = set()
        if len(boxes) and len(truth):
            iou = box_iou(boxes, truth)
            for i in range(len(boxes)):
                j = int(iou[i].argmax())
                if iou[i, j] >= 0.5 and j not in used:
                    used.add(j)
                    tp += 1
                else:
                    fp += 1
        else:
            fp += len(boxes)
        fn += len(truth) - len(used)
    return {"threshold": threshold, "precision": round(tp / max(1, tp + fp), 4),
            "recall": round(tp / max(1, tp + fn), 4), "true_positives": tp, "false_positives": fp, "missed": fn}


def detection(detectors: dict, fields: Path) -> dict:
    frames = read_frames(fields, "test")
    out = {}
    for name, det in detectors.items():
        t = time.perf_counter()
        scored = score_frames(det, frames)
        whole = whole_cells(scored)
        out[name] = {"all": detection_metrics(scored), "by_frame_size": by_frame_size(scored),
                     "at_shipped_threshold": at_threshold(scored, det.threshold),
                     "whole_cells": detection_metrics(whole), "whole_cells_by_frame_size": by_frame_size(whole),
                     "whole_cells_at_shipped_threshold": at_threshold(whole, det.threshold),
                     "seconds_per_frame": round((time.perf_counter() - t) / len(frames), 4)}
    return out


def marrow_centre(predictor: Predictor, detector, manifest: Path) -> dict:
    """Each test crop given to ``count`` as a field: is a counted cell over its centre? And, apart, did the
    detector alone find one there at its field threshold?"""
    samples = [s for s in read_manifest(manifest) if s.split == "test"]
    counter = FieldCounter(predictor, detector)
    hit = alone = 0
    for s in samples:
        image = decode_image(s.path)
        boxes = find_cells(detector, image, field_scale(image, None, counter.train_um))
        alone += any(b.covers(image.width / 2, image.height / 2) for b in boxes)
        field = counter.count_one(Path(s.path), str(s.path))
        hit += any(c.box.covers(image.width / 2, image.height / 2) for c in field.counted)
    n = len(samples)
    return {"images": n, "counted_over_centre": hit, "share": round(hit / n, 4),
            "detector_alone_at_field_threshold": round(alone / n, 4)}


def end_to_end(predictor: Predictor, detector, other: Path) -> dict:
    samples, _ = scan_folder(other)
    counter = FieldCounter(predictor, detector)
    found = right = 0
    for s in samples:
        field = counter.count_one(Path(s.path), str(s.path))
        cells = [c for c in field.counted if c.prediction is not None]
        if cells:
            found += 1
            # the field's cell: the one nearest the centre, where the lab's camera put it
            w, h = field.size
            cell = min(cells, key=lambda c: (c.box.centre[0] - w / 2) ** 2 + (c.box.centre[1] - h / 2) ** 2)
            right += cell.prediction.call == s.label
    crops = list(predictor.predict_many([s.path for s in samples]))
    crop_right = sum(r.call == s.label for r, s in zip(crops, samples))
    n = len(samples)
    return {"images": n, "white_cell_found": round(found / n, 4), "accuracy_as_fields": round(right / n, 4),
            "accuracy_as_crops": round(crop_right / n, 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--fields", default=None, help="default: ../shared/data/blood-fields")
    ap.add_argument("--other", default=None, help="default: ../shared/data/other-lab-pbc")
    ap.add_argument("--out", default="docs/results/detection.json")
    a = ap.parse_args()
    root = default_data_dir().parent
    model_dir = resolve_model_dir(a.model)
    network = Detector(model_dir / "detector")
    res = {"model": model_dir.name,
           "detection_blood_fields_test": detection({"network": network, "classical": NucleusDetector()},
                                                    Path(a.fields or root / "blood-fields"))}
    print(json.dumps(res["detection_blood_fields_test"], indent=1))
    res["marrow_centre_bone_marrow_7_test"] = marrow_centre(Predictor(model_dir), network, model_dir / "manifest.csv")
    print("marrow:", res["marrow_centre_bone_marrow_7_test"])
    res["other_lab_pbc_as_fields"] = end_to_end(Predictor(model_dir), network, Path(a.other or root / "other-lab-pbc"))
    print("other-lab-pbc:", res["other_lab_pbc_as_fields"])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()

"""Temperature scaling: make the top probability mean what it says, fitted on validation images.

One number T divides the logits before the softmax (Guo et al., 2017). It never changes which
class wins for a single view, and it is fitted on a split the test metrics do not use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from marrowscope.data import load_samples
from marrowscope.errors import MarrowscopeError
from marrowscope.evaluate import calibration_bins
from marrowscope.predict import Predictor, probs_from_logits

TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(8.0), 241))


def fit_temperature(view_logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature of least negative log-likelihood on a fine log-spaced grid from 0.25 to 8."""
    def nll(t: float) -> float:
        p = probs_from_logits(view_logits, t)
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)).mean())

    return float(min(TEMPERATURES, key=nll))


def calibrate(predictor: Predictor, data: str | Path, split: str = "val", seed: int = 0,
              data_root: str | None = None, write: bool = True) -> dict:
    """Fit T on ``split`` and (with ``write``) store it as ``marrowscope.temperature`` in config.json."""
    import torch

    if split == "test":
        raise MarrowscopeError("calibrate on the validation split (or another split the test metrics do not use), "
                               "not on test.")
    samples, _ = load_samples(data, None, seed=seed, data_root=data_root)
    chosen = [s for s in samples if s.split == split]
    if not chosen:
        raise MarrowscopeError(f"the {split} split of '{data}' holds no images.")
    index = {c: i for i, c in enumerate(predictor.classes)}
    xs, ys, logits = [], [], []
    for s in chosen:
        xs.append(predictor.preprocess(s.path))
        ys.append(index[s.label])
        if len(xs) == 32 or s is chosen[-1]:
            logits.append(predictor.view_logits(torch.stack(xs)))
            xs = []
    view_logits, y = np.concatenate(logits, axis=1), np.array(ys)
    t = fit_temperature(view_logits, y)
    before, _ = calibration_bins(probs_from_logits(view_logits, 1.0), y)
    after, _ = calibration_bins(probs_from_logits(view_logits, t), y)
    result = {"temperature": round(t, 4), "split": split, "images": len(y), "ece_before": before, "ece_after": after,
              "tta": predictor.tta}
    if write:
        cfg_path = predictor.model_dir / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.setdefault("marrowscope", {}).update(temperature=result["temperature"], calibrated_on=
                                                 f"{len(y)} images of the {split} split of {Path(data).name}")
        tmp = cfg_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(cfg, indent=2))
        os.replace(tmp, cfg_path)
    return result

"""Temperature scaling: make the top probability mean what it says, fitted on validation images.

One number T divides the logits before the softmax (Guo et al., 2017). It never changes which
class wins for a single view, and it is fitted on a split the test metrics do not use. The logits
are computed once with the four TTA views; view 0 alone is the plain prediction, so one pass fits
a temperature for inference with TTA and one for inference without, and the model folder keeps
both: each setting is calibrated for the way it is run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from marrowscope.artifacts import write_settings
from marrowscope.data import load_samples
from marrowscope.errors import MarrowscopeError, Unreadable
from marrowscope.evaluate import expected_calibration_error
from marrowscope.predict import Predictor, probs_from_logits

TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(8.0), 241))


def fit_temperature(view_logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature of least negative log-likelihood on a fine log-spaced grid from 0.25 to 8."""
    def nll(t: float) -> float:
        p = probs_from_logits(view_logits, t)
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)).mean())

    return float(min(TEMPERATURES, key=nll))


def calibrate(predictor: Predictor, data: str | Path, split: str = "val", seed: int = 0,
              data_root: str | None = None, write: bool = True, tta: Optional[bool] = None) -> dict:
    """Fit T with and without TTA on ``split``; with ``write``, store both in the model folder,
    and ``tta`` (when given) as the folder's default inference setting."""
    if split == "test":
        raise MarrowscopeError("calibrate on the validation split (or another split the test metrics do not use), "
                               "not on test.")
    samples, skipped = load_samples(data, None, seed=seed, data_root=data_root)
    chosen = [s for s in samples if s.split == split]
    if not chosen:
        raise MarrowscopeError(f"the {split} split of '{data}' holds no images.")
    index = {c: i for i, c in enumerate(predictor.classes)}
    logits, ys, unreadable = [], [], list(skipped)
    tta_was, predictor.tta = predictor.tta, True  # all four views: view 0 is the prediction without TTA
    try:
        for s, item in zip(chosen, predictor.stream_logits([s.path for s in chosen])):
            if isinstance(item, Unreadable):
                unreadable.append(item)
            else:
                logits.append(item.logits)
                ys.append(index[s.label])
    finally:
        predictor.tta = tta_was
    if not logits:
        raise MarrowscopeError(f"none of the {len(chosen)} images of the {split} split could be read.")
    views, y = np.stack(logits, axis=1), np.array(ys)
    fitted = {}
    for key, v in (("tta", views), ("no_tta", views[:1])):
        t = fit_temperature(v, y)
        fitted[key] = {"temperature": round(t, 4), "ece_before": expected_calibration_error(probs_from_logits(v), y),
                       "ece_after": expected_calibration_error(probs_from_logits(v, t), y)}
    result = {"split": split, "images": len(y), "unreadable": unreadable, **fitted}
    if write:
        settings = {"temperature": {k: fitted[k]["temperature"] for k in fitted},
                    "calibrated_on": f"{len(y)} images of the {split} split of {Path(data).name}"}
        if tta is not None:
            settings["tta"] = tta
        write_settings(predictor.model_dir, **settings)
    return result

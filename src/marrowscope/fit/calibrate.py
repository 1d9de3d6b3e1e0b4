"""Temperature scaling and the review policy, fitted on images the test metrics do not use: a
validation split, or the out-of-fold predictions of `marrowscope cv`.

Temperature: make the top probability mean what it says.

One number T divides the logits before the softmax (Guo et al., 2017). It never changes which
class wins for a single view, and it is fitted on a split the test metrics do not use. The logits
are computed once with the four TTA views; view 0 alone is the plain prediction, so one pass fits
a temperature for inference with TTA and one for inference without, and the model folder keeps
both: each setting is calibrated for the way it is run. The review policy (:mod:`marrowscope.core.policy`)
is then fitted on each setting's calibrated probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from marrowscope.core.artifacts import write_settings
from marrowscope.core.data import load_samples
from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.policy import fit_policy
from marrowscope.core.predict import Predictor, probs_from_logits
from marrowscope.report.evaluate import expected_calibration_error

TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(8.0), 241))


def fit_temperature(view_logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature of least negative log-likelihood on a fine log-spaced grid from 0.25 to 8."""
    def nll(t: float) -> float:
        p = probs_from_logits(view_logits, t)
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)).mean())

    return float(min(TEMPERATURES, key=nll))


def fit_settings(views: np.ndarray, y: np.ndarray, classes, catch: float = 0.97, accuracy: float = 0.97,
                 delta: float = 0.1, recall: float = 0.85, coverage: float = 0.95, rule: str = "bonferroni") -> dict:
    """For inference with TTA (all views) and without (view 0): the temperature, the calibration error
    before and after, and the review policy fitted on the calibrated probabilities."""
    fitted = {}
    for key, v in (("tta", views), ("no_tta", views[:1])):
        t = round(fit_temperature(v, y), 4)  # as stored: the policy is fitted on exactly these probabilities
        probs = probs_from_logits(v, t)
        fitted[key] = {"temperature": t, "ece_before": expected_calibration_error(probs_from_logits(v), y),
                       "ece_after": expected_calibration_error(probs, y),
                       "policy": fit_policy(probs, y, classes, catch, accuracy, delta, recall, coverage, rule)}
    return fitted


def calibrate(predictor: Predictor, data: str | Path | None = None, split: str = "val", seed: int = 0,
              data_root: str | None = None, write: bool = True, tta: Optional[bool] = None,
              oof: str | Path | None = None, **targets) -> dict:
    """Fit T and the review policy, with and without TTA, on ``split`` of ``data`` (or on the out-of-
    fold logits ``oof`` of `marrowscope cv`); with ``write``, store them in the model folder, and
    ``tta`` (when given) as the folder's default inference setting. ``targets``: catch, accuracy, delta,
    recall, coverage."""
    if oof is not None:
        views, y, unreadable, where = _oof_logits(predictor, Path(oof))
    else:
        views, y, unreadable, where = _split_logits(predictor, data, split, seed, data_root)
    # the fold models are not the network that ships: Bonferroni's margin covers the difference (core.policy)
    fitted = fit_settings(views, y, predictor.classes, rule="bonferroni" if oof is not None else "fixed-sequence",
                          **targets)
    result = {"on": where, "images": len(y), "unreadable": unreadable, **fitted}
    if write:
        settings = {"temperature": {k: fitted[k]["temperature"] for k in fitted},
                    "policy": {k: fitted[k]["policy"] for k in fitted}, "calibrated_on": where}
        if tta is not None:
            settings["tta"] = tta
        write_settings(predictor.model_dir, **settings)
    return result


def _oof_logits(predictor: Predictor, path: Path):
    """Out-of-fold [V, N, C] logits and labels from `marrowscope cv`'s oof.npz."""
    try:
        z = np.load(path, allow_pickle=False)
        views, y, classes = z["logits"], z["y"], [str(c) for c in z["classes"]]
    except (OSError, KeyError, ValueError) as exc:
        raise MarrowscopeError(f"'{path}' is not the oof.npz of `marrowscope cv` ({exc}).") from None
    if classes != list(predictor.classes):
        raise MarrowscopeError(f"'{path}' holds predictions over {classes}, but the model's classes are "
                               f"{list(predictor.classes)}.")
    return views, y, [], f"out-of-fold predictions of {len(y)} images ({path.parent.name}/{path.name})"


def _split_logits(predictor: Predictor, data, split: str, seed: int, data_root):
    if split == "test":
        raise MarrowscopeError("calibrate on the validation split (or another split the test metrics do not use), "
                               "not on test.")
    samples, skipped = load_samples(data, None, seed=seed, data_root=data_root)
    chosen = [s for s in samples if s.split == split]
    if not chosen:
        raise MarrowscopeError(f"the {split} split of '{data}' holds no images.")
    index = {c: i for i, c in enumerate(predictor.classes)}
    # all four views: view 0 is the prediction without TTA
    views, kept, bad = predictor.again(tta=True).stacked_logits([s.path for s in chosen])
    if views is None:
        raise MarrowscopeError(f"none of the {len(chosen)} images of the {split} split could be read.")
    return views, np.array([index[chosen[i].label] for i in kept]), [*skipped, *bad], \
        f"{len(kept)} images of the {split} split of {Path(data).name}"

"""The domain check: how unlike the model's training images an input is.

A Mahalanobis distance (Lee et al., 2018) on the channel means and standard deviations of a middle
stage of the network (:class:`~marrowscope.model.WithFeatures` says why that stage), with the mean
and a shrunk (Ledoit-Wolf) precision matrix fitted on the training images' features and stored in
the model folder (``domain.safetensors``). The score is sqrt(d^2 / D), about 1 for images like the
training set; an image is ``unusual`` above a threshold, the 99th percentile of the scores of the
validation images (never trained on), so about 1% of images like the training set are flagged.
"""

from __future__ import annotations

import random

from pathlib import Path
from typing import Optional

import numpy as np

DOMAIN_FILE = "domain.safetensors"
QUANTILE = 0.99


def flagged(score: Optional[float], above: Optional[float]) -> Optional[bool]:
    """Whether one image's domain score is above the threshold (the image looks unlike the training images);
    None without a score or a threshold (the check is off). Every entry point decides it here."""
    return None if score is None or above is None else bool(score > above)


class DomainCheck:
    def __init__(self, mean: np.ndarray, precision: np.ndarray, threshold: float):
        self.mean, self.precision, self.threshold = mean.astype(np.float32), precision.astype(np.float32), threshold

    def score(self, features: np.ndarray) -> np.ndarray:
        """[N, D] features -> [N] scores (higher: less like the training images)."""
        if features.shape[1] != self.mean.shape[0]:
            from marrowscope.errors import MarrowscopeError

            raise MarrowscopeError(f"the domain statistics ({self.mean.shape[0]} features) do not fit this model's "
                                   f"{features.shape[1]}; refit them with scripts/fit_checks.py --only domain.")
        d = features.astype(np.float32) - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, self.precision, d), 0) / d.shape[1])

    def unusual(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    @classmethod
    def load(cls, model_dir: Path) -> Optional["DomainCheck"]:
        """The folder's domain statistics, or None where it has none (the check is then off)."""
        path = Path(model_dir) / DOMAIN_FILE
        if not path.is_file():
            return None
        from safetensors.numpy import load_file

        t = load_file(str(path))
        return cls(t["mean"], t["precision"], float(t["threshold"][0]))


def fit(train_features: np.ndarray, val_features: np.ndarray, quantile: float = QUANTILE) -> DomainCheck:
    """Mean and shrunk precision from training features; threshold from validation features."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(train_features.astype(np.float64))
    check = DomainCheck(lw.location_, lw.precision_, 0.0)
    check.threshold = float(np.quantile(check.score(val_features), quantile))
    return check


def fit_for_model(model_dir: Path, data: Path, data_root: Optional[str] = None) -> dict:
    """Fit the domain check of a model folder on its training split (threshold: validation split)
    of ``data`` and store it; returns what was fitted. Uses the PyTorch backend without TTA."""
    from marrowscope.artifacts import write_settings
    from marrowscope.config import FIT_CHECK_IMAGES, FIT_CHECK_VAL_IMAGES
    from marrowscope.data import load_samples
    from marrowscope.errors import Unreadable
    from marrowscope.predict import Predictor

    predictor = Predictor(model_dir, backend="torch", tta=False)
    predictor.domain = None  # statistics being replaced are not used to compute their replacement
    samples, _ = load_samples(data, None, data_root=data_root)
    feats, rng = {}, random.Random(0)
    for split, most in (("train", FIT_CHECK_IMAGES), ("val", FIT_CHECK_VAL_IMAGES)):
        paths = [s.path for s in samples if s.split == split]
        paths = rng.sample(paths, min(len(paths), most))
        found = [r.features for r in predictor.stream_logits(paths) if not isinstance(r, Unreadable)]
        feats[split] = np.stack(found) if found else None
    if feats["val"] is None:  # a model trained on every image (keep "last"): every 7th sets the threshold
        every = np.arange(len(feats["train"])) % 7 == 0
        feats = {"train": feats["train"][~every], "val": feats["train"][every]}
    check = fit(feats["train"], feats["val"])
    save(check, predictor.model_dir)
    info = {"threshold": round(check.threshold, 4), "quantile": QUANTILE,
            "fitted_on": f"{len(feats['train'])} training images of {Path(data).name}; threshold from "
                         f"{len(feats['val'])} other images of it, not in the fit"}
    write_settings(predictor.model_dir, domain=info)
    return info


def save(check: DomainCheck, model_dir: Path) -> Path:
    from safetensors.numpy import save_file

    path = Path(model_dir) / DOMAIN_FILE
    save_file({"mean": check.mean, "precision": check.precision,
               "threshold": np.array([check.threshold], np.float32)}, str(path))
    return path

"""The domain check: how unlike the model's training images an input is.

A Mahalanobis distance (Lee et al., 2018) on the channel means and standard deviations of a middle
stage of the network (:class:`~marrowscope.core.model.WithFeatures` says why that stage), with the mean
and a shrunk (Ledoit-Wolf) precision matrix fitted on the training images' features and stored in
the model folder (``domain.safetensors``). The score is sqrt(d^2 / D), about 1 for images like the
training set; an image is ``unusual`` above a threshold, the 99th percentile of the scores of the
validation images (never trained on), so about 1% of images like the training set are flagged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from marrowscope.core.errors import MarrowscopeError

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
            raise MarrowscopeError(f"the domain statistics ({self.mean.shape[0]} features) do not fit this model's "
                                   f"{features.shape[1]}; refit them with `marrowscope fit-checks --only domain`.")
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


def save(check: DomainCheck, model_dir: Path) -> Path:
    from safetensors.numpy import save_file

    path = Path(model_dir) / DOMAIN_FILE
    save_file({"mean": check.mean, "precision": check.precision,
               "threshold": np.array([check.threshold], np.float32)}, str(path))
    return path

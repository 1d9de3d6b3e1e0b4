"""What a model folder learns from its training images besides its weights, fitted after training
and stored in the folder: the training scale (red cells, :mod:`marrowscope.core.scale`), then the
training images' sharpness (:mod:`marrowscope.core.focus`), then the domain check
(:mod:`marrowscope.core.domain`). In that order: each later one is measured on images prepared with
the earlier ones. ``marrowscope train`` runs them; ``marrowscope fit-checks`` runs them on a folder made
without them (trained on shards, with ``--no-checks``, or before a check existed).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from marrowscope.core import domain, focus, scale
from marrowscope.core.artifacts import read_model_info, write_settings
from marrowscope.core.config import FIT_CHECK_IMAGES, FIT_CHECK_VAL_IMAGES, FITS
from marrowscope.core.data import load_samples
from marrowscope.core.errors import ImageDecodeError, Unreadable
from marrowscope.core.images import decode_image
from marrowscope.core.predict import Predictor
from marrowscope.core.preprocess import Preprocess


def _check_paths(samples: list) -> list:
    """The images the checks are measured on: up to FIT_CHECK_IMAGES non-test images, the same draw each time."""
    paths = [s.path for s in samples if s.split != "test"]
    return random.Random(0).sample(paths, min(len(paths), FIT_CHECK_IMAGES))


def preprocessing_settings(samples: list, data_config: dict) -> dict:
    """The training scale and focus settings, measured on the non-test ``samples`` as :func:`fit_checks`
    measures them: the preprocessing the model folder will ship. Neither depends on the network's weights,
    so ``train`` measures them before training and validates every epoch through that preprocessing."""
    paths = _check_paths(samples)
    settings = {"scale": scale.measure(paths)}
    settings["focus"] = measure_focus(Preprocess(data_config, settings["scale"]), paths)
    return settings


def fit_checks(model_dir: Path, samples: list, manifest: Path, data_root: Optional[str] = None,
               only: Sequence[str] = FITS) -> dict:
    """Fit ``only`` (in the order of FITS) on the non-test ``samples`` of ``manifest``; returns what was fitted."""
    paths = _check_paths(samples)
    done = {}
    if "scale" in only:
        done["scale"] = scale.measure(paths)  # None: no whole red cell, the folder stays without a scale
        if done["scale"]:
            write_settings(model_dir, scale=done["scale"])
    if "focus" in only:
        done["focus"] = fit_focus(model_dir, paths)
    if "domain" in only:
        done["domain"] = fit_domain(model_dir, manifest, data_root)
    return done


def fit_focus(model_dir: Path, paths: Sequence) -> Optional[dict]:
    """Measure a model folder's focus settings on its training images ``paths`` (:func:`measure_focus`)
    and store them in its config.json; returns them (None without any readable image)."""
    settings = measure_focus(Preprocess.for_model(read_model_info(model_dir)), paths)
    if settings:
        write_settings(model_dir, focus=settings)
    return settings


def measure_focus(preprocess: Preprocess, paths: Sequence) -> Optional[dict]:
    """Focus settings from the training images ``paths`` as the network sees them through ``preprocess``
    (scale step, resize and crop; unreadable files skipped); None without any readable image."""
    views = []
    for path in paths:
        try:  # before focus matching: settings being replaced are not used to measure their replacement
            views.append(preprocess.to_input_size(decode_image(path))[0])
        except ImageDecodeError:
            continue
    return focus.measure(views)


def fit_domain(model_dir: Path, data: Path, data_root: Optional[str] = None) -> dict:
    """Fit the domain check of a model folder on its training split (threshold: validation split)
    of ``data`` and store it; returns what was fitted. Uses the PyTorch backend without TTA."""
    # statistics being replaced are not used to compute their replacement
    predictor = Predictor(model_dir, backend="torch", tta=False, domain_check=False)
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
    check = domain.fit(feats["train"], feats["val"])
    domain.save(check, predictor.model_dir)
    info = {"threshold": round(check.threshold, 4), "quantile": domain.QUANTILE,
            "fitted_on": f"{len(feats['train'])} training images of {Path(data).name}; threshold from "
                         f"{len(feats['val'])} other images of it, not in the fit"}
    write_settings(predictor.model_dir, domain=info)
    return info

"""What a model folder learns from its training images besides its weights, fitted after training
and stored in its config.json: the training scale (red cells, :mod:`marrowscope.scale`), then the
training images' sharpness (:mod:`marrowscope.focus`), then the domain check
(:mod:`marrowscope.domain`). In that order: each later one is measured on images prepared with the
earlier ones. ``marrowscope train`` runs them; ``scripts/fit_checks.py`` runs them on a folder made
without them (trained on shards, with ``--no-checks``, or before a check existed).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional, Sequence

FITS = ("scale", "focus", "domain")


def fit_checks(model_dir: Path, samples: list, manifest: Path, data_root: Optional[str] = None,
               only: Sequence[str] = FITS) -> dict:
    """Fit ``only`` (in the order of FITS) on the non-test ``samples`` of ``manifest``; returns what was fitted."""
    from marrowscope import domain, focus, scale
    from marrowscope.artifacts import write_settings
    from marrowscope.config import FIT_CHECK_IMAGES

    paths = [s.path for s in samples if s.split != "test"]
    paths = random.Random(0).sample(paths, min(len(paths), FIT_CHECK_IMAGES))
    done = {}
    if "scale" in only:
        done["scale"] = scale.measure(paths)  # None: no whole red cell, the folder stays without a scale
        if done["scale"]:
            write_settings(model_dir, scale=done["scale"])
    if "focus" in only:
        done["focus"] = focus.fit_for_model(model_dir, paths)
    if "domain" in only:
        done["domain"] = domain.fit_for_model(model_dir, manifest, data_root)
    return done

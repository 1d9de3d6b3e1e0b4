"""Fit a model folder to a new lab from its unlabelled cells (``marrowscope adapt FOLDER --unlabelled``).

What a folder of a lab's cells says without labels, and what is fitted from it:

- **its pixel size**, once for the whole folder: the red cells of all its images pooled
  (:func:`marrowscope.core.scale.measure`). An image whose own red cells give an estimate keeps it; one
  without is read at the lab's scale rather than the training images'; ``--pixel-size`` overrides both;
- **the network's normalisation statistics** (AdaBN, Li et al. 2018): every batch-norm layer's mean and
  variance re-estimated on the lab's cells, half and half with the source's. Measured on other-lab-pbc
  (``experiments/label_free_probe.py``): the lab's statistics alone cost 0.095 accuracy (its lymphocytes
  stopped being flagged unusual and lost their second reading), half and half kept it (0.898 against
  0.895);
- **not its stain**: Reinhard colour transfer with statistics pooled per lab cost 0.27 accuracy there
  (the statistics follow what fills the frame, plasma and red cells against marrow, not only the
  stain), and Macenko's (``experiments/label_free_macenko.py``) cost 0.15, and 0.147 on the training
  lab's own test images mapped onto themselves (its two stains drop colour the network uses), so none
  is applied;
- **no entropy minimisation**: measured (``experiments/label_free_tent.py``), ten steps helped there and
  thirty hurt, plain TENT collapsed over a hundred, and nothing without labels tells where to stop.
- **not its case mix**: the classes' shares estimated by EM and fed back into the calls
  (``experiments/label_free_case_mix.py``) lifted other-lab-pbc only because the fitted folder held its
  classes exactly; fitted on a folder mixed like blood, promyelocytes were then recognised 0.06-0.14 of the
  time (0.95 before). A lab's folder of ordinary cells must not teach the model to miss its rare ones.

Cells of a folder fitted this way are **never accepted**: the accept guarantee (at least 97% of
accepted cells right) was fitted on labelled cells like the training cells, and nothing here checks it
on the lab. ``marrowscope adapt`` with labelled cells is the way to earn it. The source folder is only
read.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from marrowscope.core.artifacts import (
    CONFIG,
    LABEL_FREE_MIN_CELLS,
    load_model_folder,
    resolve_model_dir,
    save_model_folder,
)
from marrowscope.core.errors import MarrowscopeError, Unreadable
from marrowscope.core.images import collect_images, decode_image
from marrowscope.core.predict import Predictor
from marrowscope.core.preprocess import Preprocess
from marrowscope.core.scale import measure
from marrowscope.fit.export import export_onnx

MIN_CELLS = LABEL_FREE_MIN_CELLS
MAX_CELLS = 1000  # more add little to a mean and a variance, and cost time
BN_MIX = 0.5  # the lab's share of each batch-norm statistic (measured: above)
ONE_CLASS_SHARE = 0.6  # a folder the model sees as mostly one class biases the statistics: say so
LABEL_FREE = "label_free"  # config.json: what was fitted, from what; its presence turns accepting off


def _readable(folder: Path, predictor: Predictor, seed: int) -> tuple[list[Path], list, list[Unreadable]]:
    files, missing = collect_images([folder])
    random.Random(seed).shuffle(files)
    kept, predictions, bad = [], [], list(missing)
    for f, r in zip(files, predictor.predict_many(files[: MAX_CELLS * 2])):
        if isinstance(r, Unreadable):
            bad.append(r)
        elif len(kept) < MAX_CELLS:
            kept.append(f)
            predictions.append(r)
    return kept, predictions, bad


def class_shares(predictions) -> dict[str, float]:
    """The share of each call among ``predictions``, most common first: what the model sees in the folder."""
    counts = Counter(p.call for p in predictions)
    return {c: round(n / len(predictions), 3) for c, n in counts.most_common()}


def adabn(net: torch.nn.Module, batches, mix: float = BN_MIX) -> int:
    """Re-estimate every batch-norm layer's statistics on ``batches`` ([N, 3, H, W] arrays), then keep
    ``mix`` of them and 1 - ``mix`` of the network's own. Returns the images seen."""
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    own = [(m.running_mean.clone(), m.running_var.clone(), m.momentum) for m in bns]
    net.eval()
    for m in bns:  # only the statistics change: no gradient, dropout stays off
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch
        m.train()
    seen = 0
    with torch.no_grad():
        for x in batches:
            net(torch.from_numpy(np.ascontiguousarray(x)))
            seen += len(x)
    for m, (mean, var, momentum) in zip(bns, own):
        m.eval()
        m.momentum = momentum
        m.running_mean.mul_(mix).add_((1 - mix) * mean)
        m.running_var.mul_(mix).add_((1 - mix) * var)
    return seen


def adapt_unlabelled(folder: str | Path, from_model: Optional[str | Path], out: str | Path, *, seed: int = 0,
                     batch_size: int = 32, mix: float = BN_MIX) -> dict:
    """Fit ``from_model`` to the lab whose unlabelled cells are in ``folder`` (any layout, searched
    recursively) into the new model folder ``out``; returns what was fitted and from what."""
    source, out, folder = resolve_model_dir(from_model), Path(out), Path(folder)
    if (out / CONFIG).is_file() or (out / "model" / CONFIG).is_file():
        raise MarrowscopeError(f"'{out}' is already a model folder; adapt writes a new one: choose another --out.")
    if not folder.is_dir():
        raise MarrowscopeError(f"'{folder}' is not a folder; --unlabelled takes a folder of the lab's cell images.")
    predictor = Predictor(source)
    files, predictions, bad = _readable(folder, predictor, seed)
    if len(files) < MIN_CELLS:
        raise MarrowscopeError(f"'{folder}' holds {len(files)} readable cell image(s); fitting a lab without labels "
                               f"needs at least {MIN_CELLS}.")
    shares = class_shares(predictions)
    top, share = next(iter(shares.items()))
    warning = (f"the model sees {share:.0%} of these cells as {top} (shares: "
               + ", ".join(f"{c} {s:.0%}" for c, s in shares.items()) + "); a folder of mostly one cell type biases "
               "the fitted statistics towards it. Fit on a folder of all the lab's cells.") if share > ONE_CLASS_SHARE \
        else None
    scale = measure(files) if predictor.info.scale else None
    lab_um = scale["pixel_size_um"] if scale else None
    net, info = load_model_folder(source)
    # the lab's images as the new folder will read them: its pooled pixel size where an image has no estimate
    preprocess = Preprocess(info.data_config, info.scale, None, info.focus, lab_um)
    batches = (np.stack([preprocess(decode_image(f))[0] for f in files[i: i + batch_size]])  # a batch at a time
               for i in range(0, len(files), batch_size))
    seen = adabn(net, batches, mix)
    record = {"images": len(files), "folder": folder.name, "pixel_size_um": lab_um,
              "pixel_size_how": (scale["how"].split("; field")[0].replace("training and validation images",
                                                                           "images of the folder")
                                 if scale else "no whole red cells: each image's own estimate"),
              "batch_norm": f"AdaBN on {seen} images, {mix:g} lab / {1 - mix:g} source", "stain": "not mapped",
              "class_shares_seen": shares, "unreadable": len(bad)}
    files_in = {n: source / n for n in ("domain.safetensors", "manifest.csv") if (source / n).is_file()}
    save_model_folder(net, out, info.classes, info.data_config, extra={**info.extra, LABEL_FREE: record},
                      half=True, files=files_in)
    if (source / "model.onnx").is_file():  # as fast as the source: the same ONNX path
        export_onnx(out, files[:8])
    _write_card(source, out, record)
    return {**record, "source": source.name, "out": str(out), "unreadable_files": [u.as_dict() for u in bad],
            "warning": warning}


def _write_card(source: Path, out: Path, r: dict) -> None:
    card = (source / "MODEL_CARD.md").read_text() if (source / "MODEL_CARD.md").is_file() else ""
    um = (f"its pixel size, {r['pixel_size_um']:.4f} µm, for images without red cells of their own "
          f"({r['pixel_size_how']})" if r["pixel_size_um"] else "no pixel size (no whole red cells in the folder)")
    section = (f"\n\n## Adapted without labels from {r['images']} images of {r['folder']}\n"
               f"Fitted from {source.name} on the lab's unlabelled cells: {um}; the batch-norm statistics "
               f"({r['batch_norm']}); the stain is not mapped. No label was used, so no cell of this folder is ever "
               "`accepted`: the accept guarantee and the figures above were measured on labelled cells of the "
               "training lab. Label a few cells of each class and run `marrowscope adapt` to earn it.\n")
    (out / "MODEL_CARD.md").write_text(card + section)

"""k-fold cross-validation: honest mean +- sd figures, out-of-fold predictions (for the review
policy, the temperature and distillation), and the fold ensemble on the untouched test images.

The test split of the data stays out of every fold; the other images are cut into k folds
(stratified, byte-identical files together) and each fold model trains on k-1 folds for a fixed
number of epochs, keeping the last (its held-out fold chooses nothing, so its scores are honest).

Run folder::

    runs/cv/
      fold0.csv ...   the manifest each fold trained on (its held-out fold as "val", never chosen on)
      final.csv       every image outside the test split as "train": the final model's manifest
      fold0/ ...      each fold's run folder, model/ inside
      oof.csv         per image: path, label, fold, p_<class> (4-view TTA, T = 1): `train --distill` reads it
      oof.npz         per image: 4-view logits [V, N, C], labels, folds (policy and temperature fits)
      test.npz        each fold model's 4-view logits on the test split
      cv.json         per fold, mean +- sd and pooled: macro-F1, accuracy, blast recall, with and without
                      TTA; the fold ensemble on the test split
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from marrowscope.core.config import TrainConfig
from marrowscope.core.csvfiles import write_csv
from marrowscope.core.data import Sample, assign_folds, load_samples
from marrowscope.core.errors import Unreadable
from marrowscope.core.manifest import write_manifest
from marrowscope.core.predict import Predictor, probs_from_logits
from marrowscope.fit.train import fit
from marrowscope.report.evaluate import compute_metrics


def cross_validate(cfg: TrainConfig, folds: int = 5, only_fold: Optional[int] = None,
                   device: Optional[str] = None) -> Optional[dict]:
    """Train the k fold models (or just ``only_fold``, for folds run in parallel) and, when all
    exist, write the out-of-fold predictions and cv.json; returns the summary."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    samples, _ = load_samples(cfg.data, cfg.classes, val=cfg.val, test=cfg.test, seed=cfg.seed,
                              data_root=cfg.data_root)
    pool = [s for s in samples if s.split != "test"]
    test = [s for s in samples if s.split == "test"]
    fold_of = assign_folds(pool, folds, cfg.seed)
    # the final model's manifest: every image outside the test split trains (`train --keep last`)
    write_manifest([replace(s, split="train") for s in pool] + test, out / "final.csv")
    for f in range(folds) if only_fold is None else [only_fold]:
        _train_fold(cfg, out, f, pool, fold_of, test)
    if only_fold is not None:
        return None
    return _predict_folds(cfg, out, folds, pool, fold_of, test, device)


def _train_fold(cfg: TrainConfig, out: Path, f: int, pool: list[Sample], fold_of: list[int], test: list[Sample]):
    run = out / f"fold{f}"
    if (run / "model" / "config.json").exists():
        print(f"fold {f}: model folder exists, reused", file=sys.stderr)
        return
    fold_samples = [replace(s, split="val" if k == f else "train") for s, k in zip(pool, fold_of)]
    # the test rows stay in the manifest, marked test: training never reads them
    manifest = write_manifest(fold_samples + test, out / f"fold{f}.csv")
    resume = (run / "checkpoints" / "last.ckpt").exists()
    print(f"fold {f}: training on {sum(k != f for k in fold_of)} images, holding out "
          f"{sum(k == f for k in fold_of)}{' (resumed)' if resume else ''}", file=sys.stderr)
    fit(replace(cfg, data=str(manifest), out=str(run), keep="last", checks=False, resume=resume, data_root=None))


def view_logits(predictor, samples: Sequence[Sample]) -> tuple[np.ndarray, list[Sample], list[Unreadable]]:
    """[V, N, C] logits of the images that could be read (with the predictor's views), those samples,
    and the unreadable ones."""
    logits, kept, bad = predictor.stacked_logits([s.path for s in samples], [s.rel for s in samples])
    return logits, [samples[i] for i in kept], bad


def _headline(probs: np.ndarray, y: np.ndarray, classes: Sequence[str]) -> dict:
    """macro-F1, accuracy and blast recall of [N, C] probabilities."""
    m = compute_metrics(probs, y, classes)
    return {"macro_f1": round(m["macro_f1"], 4), "accuracy": round(m["accuracy"], 4),
            **({"blast_recall": round(m["per_class"]["BLA"]["recall"], 4)} if "BLA" in classes else {})}


def scores(logits: np.ndarray, y: np.ndarray, classes: Sequence[str]) -> dict:
    """The headline metrics of [V, N, C] logits, with view 0 alone and with all views."""
    return {name: _headline(probs_from_logits(v), y, classes) for name, v in (("no_tta", logits[:1]), ("tta", logits))}


def _predict_folds(cfg: TrainConfig, out: Path, folds: int, pool: list[Sample], fold_of: list[int],
                   test: list[Sample], device: Optional[str]) -> dict:
    import torch


    device = device or ("cuda" if torch.cuda.is_available() else None)
    index = {c: i for i, c in enumerate(cfg.classes)}
    oof, per_fold, test_logits, test_kept = {}, [], [], []
    for f in range(folds):
        predictor = Predictor(out / f"fold{f}" / "model", backend="torch", tta=True, device=device)
        held = [s for s, k in zip(pool, fold_of) if k == f]
        lg, kept, bad = view_logits(predictor, held)
        for r in bad:
            print(f"fold {f}: {r.source}: {r.reason}", file=sys.stderr)
        oof.update({s.rel: (s, f, lg[:, i]) for i, s in enumerate(kept)})
        per_fold.append({"fold": f, "images": len(kept), **scores(lg, np.array([index[s.label] for s in kept]),
                                                                    cfg.classes)})
        print(f"fold {f}: {json.dumps(per_fold[-1])}", file=sys.stderr)
        if test:
            lg_test, test_kept, _ = view_logits(predictor, test)
            test_logits.append(lg_test)
    rels = [s.rel for s in pool if s.rel in oof]
    logits = np.stack([oof[r][2] for r in rels], axis=1)
    y = np.array([index[oof[r][0].label] for r in rels])
    np.savez_compressed(out / "oof.npz", logits=logits, y=y, folds=np.array([oof[r][1] for r in rels]),
                        paths=np.array(rels), classes=np.array(cfg.classes))
    probs = probs_from_logits(logits)
    write_csv(out / "oof.csv", ["path", "label", "fold", *(f"p_{c}" for c in cfg.classes)],
              [[r, oof[r][0].label, oof[r][1], *(f"{p:.5f}" for p in probs[i])] for i, r in enumerate(rels)])
    summary = {"folds": folds, "images": len(rels), "per_fold": per_fold, "pooled": scores(logits, y, cfg.classes),
               "mean_sd": _mean_sd(per_fold)}
    if test_logits:
        yt = np.array([index[s.label] for s in test_kept])
        stacked = np.stack(test_logits)  # [F, V, N, C]
        np.savez_compressed(out / "test.npz", logits=stacked, y=yt, paths=np.array([s.rel for s in test_kept]))
        n, c = stacked.shape[2:]
        # the ensemble averages the probabilities of every fold model (and, with TTA, of every view)
        summary["test_ensemble"] = {"images": len(yt), **{
            name: _headline(probs_from_logits(v.reshape(-1, n, c)), yt, cfg.classes)
            for name, v in (("no_tta", stacked[:, :1]), ("tta", stacked))}}
    (out / "cv.json").write_text(json.dumps(summary, indent=2))
    return summary


def _mean_sd(per_fold: list[dict]) -> dict:
    """{setting: {metric: [mean, sd]}} over the folds."""
    out = {}
    for setting in ("no_tta", "tta"):
        out[setting] = {}
        for metric in per_fold[0][setting]:
            values = [r[setting][metric] for r in per_fold]
            out[setting][metric] = [round(float(np.mean(values)), 4), round(float(np.std(values, ddof=1)), 4)]
    return out

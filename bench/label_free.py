"""Fitting a lab without labels (`adapt --unlabelled`), measured with the labels it never sees.

    python bench/label_free.py [--model models/default] [--out docs/results/label_free.json]

1. other-lab-pbc, the README's adaptation split: fitted on the first 20 images of each class by sorted
   file name (100 images, pooled, no label used); accuracy and recall per class on the other 400, before
   and after, and the share of cells accepted.
2. The training lab itself: fitted on 500 of the model's own training images (bone-marrow-7's train
   split, pooled, no label used); macro-F1 and blast recall on bone-marrow-7's 525 test images, before
   and after (the fit should change nothing there), and the time the fit took on this machine.
"""

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from marrowscope.core.artifacts import resolve_model_dir
from marrowscope.core.data import default_data_dir
from marrowscope.core.manifest import read_manifest
from marrowscope.core.predict import Predictor
from marrowscope.fit.label_free import adapt_unlabelled
from marrowscope.report.evaluate import evaluate


def summary(report: dict) -> dict:
    out = {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
           "recall": {c: r["recall"] for c, r in report["per_class"].items() if r["support"]}}
    if report.get("decisions"):
        out["accepted_share"] = report["decisions"]["accepted_share"]
    if "BLA" in report["per_class"]:
        out["blast_recall"] = report["per_class"]["BLA"]["recall"]
    return out


def adaptation_split(other: Path, work: Path) -> tuple[Path, Path]:
    """other-lab-pbc's adaptation split under ``work``: its first 20 images per class by sorted file name,
    pooled in one folder without class folders or labels, and the other 400 in class folders."""
    fit, rest = work / "fit", work / "rest"
    fit.mkdir()
    for c in sorted(p.name for p in other.iterdir() if p.is_dir()):
        files = sorted((other / c).glob("*.jpg"))
        (rest / c).mkdir(parents=True)
        for f in files[:20]:
            shutil.copy(f, fit / f.name)  # pooled: no class folders, no labels
        for f in files[20:]:
            shutil.copy(f, rest / c / f.name)
    return fit, rest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="docs/results/label_free.json")
    a = ap.parse_args()
    source = resolve_model_dir(a.model)
    other = default_data_dir().parent / "other-lab-pbc"
    res = {"model": source.name}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        fit, rest = adaptation_split(other, work)
        t = time.perf_counter()
        adapt_unlabelled(fit, source, work / "lab")
        secs = time.perf_counter() - t
        res["other_lab_pbc"] = {"fitted_on": "first 20 per class, 100 images, unlabelled",
                                "fit_seconds": round(secs, 1),
                                "before": summary(evaluate(Predictor(source), rest, "all")),
                                "after": summary(evaluate(Predictor(work / "lab"), rest, "all"))}
        print(json.dumps(res["other_lab_pbc"]), flush=True)

        home = work / "home"
        home.mkdir()
        train = [s for s in read_manifest(source / "manifest.csv") if s.split == "train"]
        random.Random(0).shuffle(train)
        for i, s in enumerate(train[:500]):
            shutil.copy(s.path, home / f"{i:03d}{s.path.suffix}")
        t = time.perf_counter()
        adapt_unlabelled(home, source, work / "own")
        secs = time.perf_counter() - t
        before = evaluate(Predictor(source), source / "manifest.csv", "test")
        after = evaluate(Predictor(work / "own"), source / "manifest.csv", "test")
        res["bone_marrow_7_own_lab"] = {"fitted_on": "500 training images, unlabelled",
                                        "fit_seconds": round(secs, 1), "before": summary(before),
                                        "after": summary(after)}
        print(json.dumps(res["bone_marrow_7_own_lab"]), flush=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()

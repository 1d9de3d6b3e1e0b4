"""Lab adaptation on other-lab-pbc, as its README says: adapt on the first K images of each class (by
sorted file name), measure on the remaining 80 of each; and bone-marrow-7 test macro-F1 before/after.

    python bench/adapt.py [--model models/default] [--cells 5 10 20] [--seeds 0] [--out docs/results/adapt.json]

Prints wall time of `adapt` (2 CPU cores here) and both accuracies for each K and seed (the seed of
the fine-tune: shuffling, augmentation, replayed images; the cells are always the same).
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from marrowscope.core.artifacts import resolve_model_dir, write_settings
from marrowscope.core.data import default_data_dir
from marrowscope.core.predict import Predictor
from marrowscope.fit.adapt import REPLAY_DISTILL, adapt
from marrowscope.report.evaluate import evaluate


def after(out: Path, rest: Path, source: Path) -> dict:
    """The adapted folder ``out`` measured on the other lab's remaining cells and the home lab's test split."""
    lab = evaluate(Predictor(out), rest, "all")
    own = evaluate(Predictor(out), source / "manifest.csv", "test")
    return {"other_lab_accuracy_after": lab["accuracy"],
            "other_lab_recall_after": {c: r["recall"] for c, r in lab["per_class"].items() if r["support"]},
            "own_test_macro_f1_after": own["macro_f1"],
            "own_test_blast_recall_after": own["per_class"]["BLA"]["recall"],
            # the adapted folder's refitted domain check on both labs' images
            "other_lab_warned_after": lab.get("unusual_share"),
            "own_test_warned_after": own.get("unusual_share"),
            # read by the source model the adapted folder keeps as its home
            "other_lab_home_share": lab.get("home_share"),
            "own_test_home_share": own.get("home_share"),
            **{f"{where}_{k}": m["decisions"].get(k) for where, m in (("other_lab", lab), ("own_test", own))
               for k in ("accepted_share", "accepted_accuracy", "blast_catch")}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--cells", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--epochs", type=int, default=None, help="default: adapt's own choice for the source")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--mix", type=float, default=None, help="default: adapt's own choice for the source")
    ap.add_argument("--distill", type=float, default=REPLAY_DISTILL, help="replayed images' weight on the source's "
                    "probabilities")
    ap.add_argument("--holdout", type=float, default=0.0, help="share of each class adapt holds out (its own "
                    "default is 0.2: what a user running it as it is gets)")
    ap.add_argument("--lab-tta", action="store_true", help="also measure each adapted folder with its own network "
                    "reading four views (flips and turns) and the home model as it is")
    ap.add_argument("--out", default="docs/results/adapt.json")
    a = ap.parse_args()
    source = resolve_model_dir(a.model)
    other = default_data_dir().parent / "other-lab-pbc"
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        rest = work / "rest"
        for c in sorted(p.name for p in other.iterdir() if p.is_dir()):
            files = sorted((other / c).glob("*.jpg"))
            (rest / c).mkdir(parents=True)
            for f in files[20:]:  # always the same 80 per class, whatever K
                shutil.copy(f, rest / c / f.name)
        before_lab = evaluate(Predictor(source), rest, "all")
        before_own = evaluate(Predictor(source), source / "manifest.csv", "test")
        for k in a.cells:
            cells = work / f"cells{k}"
            for c in sorted(p.name for p in other.iterdir() if p.is_dir()):
                (cells / c).mkdir(parents=True)
                for f in sorted((other / c).glob("*.jpg"))[:k]:
                    shutil.copy(f, cells / c / f.name)
            for seed in a.seeds:
                out = work / f"adapted{k}_{seed}"
                t = time.perf_counter()
                done = adapt(cells, source, out, epochs=a.epochs, holdout=a.holdout, seed=seed, mix=a.mix,
                             distill=a.distill)
                secs = time.perf_counter() - t
                rows.append({"cells_per_class": k, "seed": seed, "mix": done["mix"], "epochs": done["epochs"],
                             "trained_per_class": done["per_class"], "replay_distill": a.distill,
                             "adapt_seconds": round(secs, 1),
                             "other_lab_accuracy_before": before_lab["accuracy"],
                             "own_test_macro_f1_before": before_own["macro_f1"],
                             "own_test_blast_recall_before": before_own["per_class"]["BLA"]["recall"],
                             **after(out, rest, source)})
                if a.lab_tta:
                    write_settings(out, tta=True)  # the adapted network's setting; home keeps its own
                    rows[-1]["lab_tta"] = after(out, rest, source)
                print(json.dumps(rows[-1]), flush=True)
    Path(a.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The "Other labs" table: a model on another lab's images and on its own lab's untouched test split,
and how well its domain check tells the two apart.

    python bench/other_labs.py --model models/default [--before OLD_MODEL_DIR] [--out docs/results/other_labs.json]

Each model runs with its default settings (backend, TTA, temperature, scale). Images:
other-lab-pbc, all 500 (never trained on); bone-marrow-7, the 525 test images of the model's manifest.
"""

import argparse
import csv
import json
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from marrowscope.core.artifacts import resolve_model_dir
from marrowscope.core.data import default_data_dir
from marrowscope.core.predict import Predictor
from marrowscope.report.evaluate import evaluate


def _scores(out: Path) -> list[float]:
    with open(out / "predictions.csv", newline="") as fh:
        return [float(r["domain_score"]) for r in csv.DictReader(fh) if r.get("domain_score")]


def measure(model: str, other: Path, work: Path) -> dict:
    model_dir = resolve_model_dir(model)
    p = Predictor(model_dir)
    lab = evaluate(p, other, "all", work / "other")
    own = evaluate(p, model_dir / "manifest.csv", "test", work / "own")
    row = {"model": model_dir.name, "settings": lab["description"].split("(", 1)[1].rstrip(").") if "(" in
           lab["description"] else "", "other_lab_accuracy": lab["accuracy"],
           "other_lab_recall": {c: r["recall"] for c, r in lab["per_class"].items() if r["support"]},
           "own_test_macro_f1": own["macro_f1"], "own_test_blast_recall": own["per_class"]["BLA"]["recall"]}
    s_own, s_other = _scores(work / "own"), _scores(work / "other")
    if s_own and s_other:
        y = np.r_[np.zeros(len(s_own)), np.ones(len(s_other))]
        row["domain_auroc"] = float(roc_auc_score(y, np.r_[s_own, s_other]))
        row["own_test_warned"] = own.get("unusual_share")
        row["other_lab_warned"] = lab.get("unusual_share")
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--before", default=None, help="an earlier model folder to compare with")
    ap.add_argument("--other", default=None, help="default: ../shared/data/other-lab-pbc")
    ap.add_argument("--out", default="docs/results/other_labs.json")
    a = ap.parse_args()
    other = Path(a.other) if a.other else default_data_dir().parent / "other-lab-pbc"
    rows = []
    for name, model in (("before", a.before), ("after", a.model)):
        if name == "before" and not model:
            continue
        with tempfile.TemporaryDirectory() as work:
            rows.append({"which": name, **measure(model, other, Path(work))})
        print(json.dumps(rows[-1]), flush=True)
    Path(a.out).write_text(json.dumps(rows, indent=2) + "\n")
    classes = list(rows[-1]["other_lab_recall"])
    print("\n| model | other-lab accuracy | " + " | ".join(classes) + " | own test macro-F1 | own test BLA recall "
          "| domain AUROC | own test warned |")
    print("|---" * (len(classes) + 6) + "|")
    for r in rows:
        auroc = f"{r['domain_auroc']:.3f}" if "domain_auroc" in r else "-"
        warned = f"{r['own_test_warned']:.1%}" if r.get("own_test_warned") is not None else "-"
        print(f"| {r['which']} | {r['other_lab_accuracy']:.3f} | " +
              " | ".join(f"{r['other_lab_recall'][c]:.2f}" for c in classes) +
              f" | {r['own_test_macro_f1']:.3f} | {r['own_test_blast_recall']:.3f} | {auroc} | {warned} |")


if __name__ == "__main__":
    main()

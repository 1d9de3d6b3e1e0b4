"""How a review policy fitted on some models' predictions holds for another model: leave one fold out.

The shipped model is none of the fold models whose out-of-fold predictions fit its policy. This
script measures what that costs without touching the test split: for each fold k, the temperature
and the policy are fitted on the out-of-fold predictions of the other folds' models and applied to
fold k's own model on fold k's images, a model the fit never saw. The calls use the fitted blast weight.

    python experiments/policy_across_models.py runs/gpu11/student/oof.npz [--no-tta] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from marrowscope.core.policy import Policy, decision_metrics
from marrowscope.core.predict import probs_from_logits
from marrowscope.fit.calibrate import fit_settings


def held_out(views: np.ndarray, y: np.ndarray, folds: np.ndarray, classes: list, key: str) -> dict:
    """The decisions of each fold's model on its own fold, under a policy fitted on the other folds."""
    decisions, pred = np.empty(len(y), dtype=object), np.zeros(len(y), dtype=int)
    in_set = np.zeros(views.shape[1:], dtype=bool)
    thresholds = []
    for k in np.unique(folds):
        fit, test = folds != k, folds == k
        s = fit_settings(views[:, fit], y[fit], classes)[key]
        p = probs_from_logits(views[:1, test] if key == "no_tta" else views[:, test], s["temperature"])
        calls = Policy.from_settings(s["policy"]).apply(p, classes)
        decisions[test], pred[test], in_set[test] = calls.decision, calls.pred, calls.in_set
        thresholds.append({"fold": int(k), "blast": s["policy"]["blast_threshold"],
                           "accept": s["policy"]["accept_threshold"], "blast_weight": s["policy"]["blast_weight"]})
    from sklearn.metrics import f1_score

    return {"thresholds": thresholds, "macro_f1": round(float(f1_score(y, pred, average="macro")), 4),
            **decision_metrics(decisions, pred, y, classes, in_set)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("oof", help="oof.npz of `marrowscope cv`")
    ap.add_argument("--no-tta", dest="tta", action="store_false")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    z = np.load(a.oof)
    views, y, folds, classes = z["logits"], z["y"], z["folds"], [str(c) for c in z["classes"]]
    key = "tta" if a.tta else "no_tta"
    r = {"oof": a.oof, "setting": key, **held_out(views, y, folds, classes, key)}
    weights = ", ".join(f"{t['blast_weight']:.2f}" for t in r["thresholds"])
    correct = "-" if r["accepted_accuracy"] is None else f"{r['accepted_accuracy']:.3f}"  # nothing accepted
    print(f"{key}: macro-F1 {r['macro_f1']:.3f}, blast recall {r['blast_recall']:.3f} (weights {weights}); "
          f"blast catch {r['blast_catch']:.3f} "
          f"({r['blasts_missed_unflagged']} of {r['blasts']} missed, {r['blasts_accepted_as_other']} accepted as "
          f"another type); accepted {r['accepted_share']:.3f} "
          f"at {correct}; prediction sets: coverage {r['set_coverage']:.3f}, mean size "
          f"{r['set_mean_size']:.2f}; blast thresholds "
          + ", ".join(f"{t['blast']:.3f}" for t in r["thresholds"]))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(r, fh, indent=2)


if __name__ == "__main__":
    main()

"""Two ways of choosing the accept threshold, each fitted on some fold models and applied to another.

The rule for out-of-fold predictions (``policy.accept_threshold``, ``bonferroni``) is Learn then Test with
Bonferroni over a coarse grid of 17 thresholds; ``fixed-sequence`` (``policy.fixed_sequence``) is the rule
for the shipped network's own held-out cells. Fixed-sequence testing (Angelopoulos et al., 2021) tests a
fine grid strictest first, each at the full delta, and keeps the last threshold passed; it starts where a
test has the power to pass (enough accepted cells that, at half the target's error rate, it would pass 9
times in 10). Both are valid
for cells scored by the model they were fitted on. The shipped model is none of the fold models, so this
script asks how each holds on a model the fit never saw: for each fold k, temperature, blast weight, blast
threshold and the accept threshold are fitted on the other folds' out-of-fold predictions and applied to
fold k's own model on fold k's images. It prints the accepted share and accuracy, overall and per fold.

    python experiments/accept_rules.py runs/cv/student/oof.npz [--accuracy 0.97] [--delta 0.1]
"""

from __future__ import annotations

import argparse

import numpy as np

from marrowscope.core.policy import Policy, fixed_sequence
from marrowscope.core.predict import probs_from_logits
from marrowscope.fit.calibrate import fit_settings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("oof", help="oof.npz of `marrowscope cv`")
    ap.add_argument("--accuracy", type=float, default=0.97)
    ap.add_argument("--delta", type=float, default=0.1)
    a = ap.parse_args()
    z = np.load(a.oof)
    views, y, folds, classes = z["logits"][:1], z["y"], z["folds"], [str(c) for c in z["classes"]]
    # each fold's temperature and policy are fitted once, on the other folds; the rules differ only in the
    # accept threshold
    fitted = {k: fit_settings(views[:, folds != k], y[folds != k], classes, accuracy=a.accuracy, delta=a.delta)
              ["no_tta"] for k in np.unique(folds)}
    for rule in ("bonferroni", "fixed-sequence"):
        accepted, right, per_fold = np.zeros(len(y), bool), np.zeros(len(y), bool), []
        for k, s in fitted.items():
            fit, held = folds != k, folds == k
            policy = Policy.from_settings(s["policy"])
            if rule == "fixed-sequence":
                calls = policy.apply(probs_from_logits(views[:, fit], s["temperature"]), classes)
                policy.accept_threshold = fixed_sequence(calls.pred == y[fit], calls.prob,
                                                         calls.decision != "possible-blast", a.accuracy, a.delta)
            calls = policy.apply(probs_from_logits(views[:, held], s["temperature"]), classes)
            accepted[held], right[held] = calls.decision == "accepted", calls.pred == y[held]
            share = right[held][accepted[held]].mean() if accepted[held].any() else float("nan")
            per_fold.append(f"{policy.accept_threshold:.3f}: {accepted[held].mean():.3f} at {share:.3f}")
        overall = right[accepted].mean() if accepted.any() else float("nan")
        print(f"{rule}: accepted {accepted.mean():.3f} of {len(y)} at {overall:.4f} correct; "
              f"per fold (threshold: accepted at correct) " + "; ".join(per_fold))


if __name__ == "__main__":
    main()

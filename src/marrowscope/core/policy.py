"""The review policy: which cells a person must look at, fitted on predictions of images the model
did not learn from (out-of-fold predictions of ``marrowscope cv``, or a validation split), never on test.

Each cell gets a predicted class and a ``decision``.

The predicted class weighs P(BLA) by ``blast_weight`` (>= 1) before taking the most probable class:
the probabilities stay as calibrated, but a missed blast costs more than a false one (a person looks at
cells called blasts; a blast called a lymphocyte and accepted is lost), so a cell is called a blast once
P(BLA) reaches 1 / blast_weight of the leading probability. The weight is the split-conformal quantile
of r = (highest other probability) / P(BLA) over the calibration blasts: with k = ceil(recall (n + 1)),
w = the k-th smallest r, a new blast has r <= w, so is predicted BLA, with probability at least
``recall`` (never below 1: the rule only ever favours blasts). The guarantee holds for cells like the
calibration cells, so images the domain check finds unusual (``usual`` false) get the most probable
class: on another lab's images the network already takes lymphocytes for blasts (other-lab-pbc: 30 of
100), and weighing P(BLA) there cost 0.02 of its accuracy; the possible-blast flag still applies to them.

Each cell also gets a prediction set: its call and every class c whose probability reaches that class's
own threshold ``set_thresholds[c]``, the class-conditional (Mondrian) split-conformal threshold of Sadinle
et al. (2019): over the calibration cells of class c, with k = floor((1 - coverage) (n_c + 1)), t_c = the
k-th smallest P(c). A new cell of class c then has c in its set with probability at least ``coverage``,
for every class apart. One threshold for all classes (fitted at 95% on the same out-of-fold cells) had
put BLA in the sets of only 65 of 74 bone-marrow-7 test blasts: blasts, the hardest class, fell short.
The call is always in the set (a larger set keeps the guarantee), so no set is empty; an easy class's
threshold is high (EOS about 0.9). The guarantee is for cells like the calibration cells: unusual images
get no set. One class: the model is sure at that level; several: which cell types a reviewer should
weigh.

Each cell's ``decision``:

- ``possible-blast``: not predicted a blast, but P(BLA) is at least ``blast_threshold``. A missed blast
  is the costliest error (the blast percentage decides acute leukaemia), so the threshold is the split-
  conformal lower bound of the blast score s = 1 if predicted BLA else P(BLA) over the calibration
  blasts: with k = floor((1 - catch) (n + 1)), t = the k-th smallest score, a new blast scores below t
  with probability at most k / (n + 1) <= 1 - catch (Vovk et al., 2005), so at least ``catch`` of
  blasts are predicted BLA or flagged.
- ``accepted``: the predicted class's probability is at least ``accept_threshold`` (and the cell is not a possible
  blast). The threshold comes from Learn then Test (Angelopoulos et al., 2021): for each threshold a
  binomial test rejects "the accepted cells are less than ``accuracy`` correct", and the lowest rejected
  threshold keeps the accepted cells' accuracy at or above the target with probability at least
  1 - delta over the calibration set. Two ways of testing many thresholds keep that error rate:
  ``fixed-sequence``, a fine grid tested strictest first, each at the full delta, stopping at the first
  failure; and ``bonferroni``, a coarse grid, each test at delta / its size. Both hold for cells scored by
  the network they were fitted on. Fitted on the shipped network's own held-out cells (``calibrate`` on a
  split), fixed-sequence testing is used: it accepts more. Fitted on fold models' out-of-fold predictions
  (``calibrate --oof``), Bonferroni is: its margin covers the gap between those models and the one that
  ships (with fixed-sequence thresholds fitted on four fold models, the fifth's accepted cells fell to
  95.5% correct: ``experiments/accept_rules.py``).
- ``review``: everything else, and every cell of an image the domain check finds unusual that would
  otherwise be accepted: the accept guarantee holds for cells like the calibration cells only (on one
  other lab's blood, 137 accepted unusual cells were 86.9% right; on other-lab-pbc the bundled model's
  186 accepted unusual cells were all right, and now go to review).

A model folder without a fitted policy accepts cells whose top probability reaches REVIEW_BELOW and
flags no possible blasts (the rule of marrowscope 0.1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple, Optional, Sequence

import numpy as np

from marrowscope.core.config import REVIEW_BELOW

DECISIONS = ("accepted", "review", "possible-blast")
BLAST = "BLA"
# accept thresholds tried, fixed before seeing data: coarse, because Bonferroni divides delta among them
GRID = np.array([*np.round(np.arange(0.30, 0.951, 0.05), 2), 0.97, 0.98, 0.99])
# fixed-sequence testing spends the whole delta on each test, so its grid can be fine; strictest first
FINE = np.round(np.arange(0.995, 0.299, -0.005), 3)


class Calls(NamedTuple):
    """What the policy says of N cells: [N] call (class index) and [N] its probability, [N] decisions (str),
    [N, C] prediction sets as a mask (None without set thresholds) and as class names, most probable first
    (None for an unusual image or without set thresholds)."""

    pred: np.ndarray
    prob: np.ndarray
    decision: np.ndarray
    in_set: Optional[np.ndarray]
    sets: list


@dataclass
class Policy:
    accept_threshold: float = REVIEW_BELOW  # > 1: nothing is accepted
    blast_threshold: Optional[float] = None
    fitted: bool = False
    blast_weight: float = 1.0  # 1: the most probable class; folders calibrated before it have none
    set_thresholds: Optional[list] = None  # per class; None: no prediction sets (folders calibrated before them)
    set_coverage: Optional[float] = None  # the share of cells whose set holds their true class, as fitted

    @classmethod
    def from_settings(cls, settings: Optional[dict], review_below: float = REVIEW_BELOW) -> "Policy":
        if not settings:
            return cls(review_below)
        return cls(float(settings["accept_threshold"]), settings.get("blast_threshold"), True,
                   float(settings.get("blast_weight", 1.0)), settings.get("set_thresholds"),
                   (settings.get("targets") or {}).get("set_coverage"))

    def at_least(self, review_below: Optional[float]) -> "Policy":
        """This policy, with no cell accepted whose call's probability is below ``review_below`` (None: as it
        is). Only ever stricter: a fitted policy keeps its guarantees, and fewer cells are accepted."""
        if review_below is None or review_below <= self.accept_threshold:
            return self
        return replace(self, accept_threshold=float(review_below))

    def classify(self, probs: np.ndarray, classes: Sequence[str], usual: Optional[np.ndarray] = None) -> np.ndarray:
        """[N, C] (or [C]) probabilities -> [N] predicted class indices, P(BLA) weighed by ``blast_weight``
        in the rows where ``usual`` ([N] bool; default: all) is true."""
        probs = np.atleast_2d(probs)
        if self.blast_weight == 1.0 or BLAST not in classes:
            return probs.argmax(axis=1)
        weighed = probs.copy()
        rows = slice(None) if usual is None else np.asarray(usual, dtype=bool).reshape(-1)
        weighed[rows, list(classes).index(BLAST)] *= self.blast_weight
        return weighed.argmax(axis=1)

    def apply(self, probs: np.ndarray, classes: Sequence[str], usual: Optional[np.ndarray] = None) -> Calls:
        """Everything the policy says of [N, C] (or [C]) probabilities, each cell called once: its call and
        that class's probability, its decision and its prediction set. ``usual``: [N] bool, the domain check
        finds the image like the training images (default: all)."""
        probs = np.atleast_2d(probs)
        n = len(probs)
        usual = np.ones(n, bool) if usual is None else np.asarray(usual, dtype=bool).reshape(-1)
        pred = self.classify(probs, classes, usual)
        prob = probs[np.arange(n), pred]
        # the accept guarantee was fitted on cells like the training cells: an unusual one is never accepted
        decision = np.where((prob >= self.accept_threshold) & usual, "accepted", "review").astype(object)
        if self.blast_threshold is not None and BLAST in classes:
            b = list(classes).index(BLAST)
            decision[(pred != b) & (probs[:, b] >= self.blast_threshold)] = "possible-blast"
        mask, sets = None, [None] * n
        if self.set_thresholds is not None:
            mask = probs >= np.asarray(self.set_thresholds)
            # an easy class's bar is high (EOS: 0.9), so a cell could reach none: the call keeps the set whole
            mask[np.arange(n), pred] = True
            sets = [[classes[i] for i in np.argsort(-row, kind="stable") if keep[i]] if u else None
                    for row, keep, u in zip(probs, mask, usual)]
        return Calls(pred, prob, decision, mask, sets)

    def decide(self, probs: np.ndarray, classes: Sequence[str], usual: Optional[np.ndarray] = None) -> np.ndarray:
        """[N, C] (or [C]) probabilities -> the decision of each cell (array of str)."""
        return self.apply(probs, classes, usual).decision

    def describe(self) -> str:
        if not self.fitted:
            return "every cell is marked for review (nothing is accepted)" if self.accept_threshold > 1 else \
                f"cells with a top probability below {self.accept_threshold:.2f} are marked for review"
        blast = "" if self.blast_threshold is None else \
            f"; not predicted a blast but P(BLA) >= {self.blast_threshold:.3f}: possible blast"
        accept = "nothing is accepted" if self.accept_threshold > 1 else \
            f"probability of the call >= {self.accept_threshold:.3f}: accepted"
        weight = "" if self.blast_weight == 1.0 else \
            f"called a blast when P(BLA) >= 1/{self.blast_weight:.2f} of the leading probability (not in unusual " \
            "images); "
        sets = "" if self.set_thresholds is None else \
            f"; prediction sets: each class from its own P threshold ({min(self.set_thresholds):.3f}-" \
            f"{max(self.set_thresholds):.3f})"
        return f"{weight}{accept} (never in unusual images){blast}; the rest: review{sets}"


def blast_weight(probs: np.ndarray, y: np.ndarray, b: int, recall: float) -> float:
    """The split-conformal weight on P(BLA) under which at least ``recall`` of blasts are predicted BLA."""
    blasts = y == b
    if not blasts.any() or recall <= 0:
        return 1.0
    others = np.delete(probs[blasts], b, axis=1).max(axis=1)
    ratios = np.sort(others / np.maximum(probs[blasts, b], 1e-12))
    k = min(int(np.ceil(recall * (len(ratios) + 1))), len(ratios))
    # a blast whose ratio equals the weight ties with its leading class; nudge so that it wins
    return max(1.0, float(ratios[k - 1]) * (1 + 1e-6))


def blast_threshold(probs: np.ndarray, pred: np.ndarray, y: np.ndarray, b: int, catch: float) -> Optional[float]:
    """The split-conformal threshold on P(BLA) that catches at least ``catch`` of blasts (``pred``: the
    predicted class indices)."""
    blasts = y == b
    if not blasts.any():
        return None
    scores = np.sort(np.where(pred[blasts] == b, 1.0, probs[blasts, b]))
    k = int(np.floor((1 - catch) * (len(scores) + 1)))
    return 0.0 if k < 1 else float(scores[k - 1])


def accept_threshold(correct: np.ndarray, top: np.ndarray, eligible: np.ndarray, accuracy: float,
                     delta: float, rule: str = "bonferroni") -> float:
    """The lowest threshold whose accepted cells pass the binomial test, with ``rule`` over the thresholds
    (see the module's docstring); 1.01 (accept nothing) when none does."""
    from scipy.stats import binom

    if rule == "fixed-sequence":
        return fixed_sequence(correct, top, eligible, accuracy, delta)
    level = delta / len(GRID)
    passing = []
    for t in GRID:
        acc = eligible & (top >= t)
        n, errors = int(acc.sum()), int((acc & ~correct).sum())
        # p-value of "error rate >= 1 - accuracy": seeing this few errors among n cells
        if n and binom.cdf(errors, n, 1 - accuracy) <= level:
            passing.append(float(t))
    return min(passing) if passing else 1.01


def fixed_sequence(correct: np.ndarray, top: np.ndarray, eligible: np.ndarray, accuracy: float,
                   delta: float) -> float:
    """The lowest threshold of FINE reached by fixed-sequence binomial tests, strictest first; 1.01 if none.
    It begins where a test has the power to pass (enough accepted cells that, at half the target's error
    rate, it would pass 9 times in 10): a test begun among the very few surest cells fails on one error and
    would end the sequence there."""
    from scipy.stats import binom

    risk, counts = 1 - accuracy, np.arange(1, int(eligible.sum()) + 1)
    most = binom.ppf(delta, counts, risk)
    most = np.where(binom.cdf(most, counts, risk) <= delta, most, most - 1)  # the most errors a pass allows
    powered = (most >= 0) & (binom.cdf(most, counts, risk / 2) >= 0.9)
    # where to begin depends on how many cells are accepted, never on their labels
    fewest = min(counts[powered][0] if powered.any() else len(counts), max(1, len(counts) // 2))
    chosen = 1.01
    for t in FINE:
        acc = eligible & (top >= t)
        n, errors = int(acc.sum()), int((acc & ~correct).sum())
        if n < fewest:
            continue
        if binom.cdf(errors, n, risk) > delta:
            break
        chosen = float(t)
    return chosen


def set_thresholds(probs: np.ndarray, y: np.ndarray, coverage: float) -> list[float]:
    """Per class, the split-conformal threshold on its probability under which sets hold the class for at
    least ``coverage`` of its new cells (0.0, always in the set, for a class with too few calibration cells)."""
    out = []
    for c in range(probs.shape[1]):
        own = np.sort(probs[y == c, c])
        k = int(np.floor((1 - coverage) * (len(own) + 1)))
        out.append(0.0 if k < 1 else float(own[k - 1]))
    return out


def fit_policy(probs: np.ndarray, y: np.ndarray, classes: Sequence[str], catch: float = 0.97,
               accuracy: float = 0.97, delta: float = 0.1, recall: float = 0.85, coverage: float = 0.95,
               rule: str = "bonferroni") -> dict:
    """Fit the blast weight, then both thresholds (the accept threshold with ``rule``), and the prediction
    sets' thresholds, on calibrated probabilities of held-out cells; returns the settings for the model
    folder, with what they give on these cells."""
    b = list(classes).index(BLAST) if BLAST in classes else None
    policy = Policy(1.01, None, True, blast_weight(probs, y, b, recall) if b is not None else 1.0)
    pred = policy.classify(probs, classes)
    policy.blast_threshold = blast_threshold(probs, pred, y, b, catch) if b is not None else None
    eligible = policy.decide(probs, classes) != "possible-blast"
    policy.accept_threshold = accept_threshold(pred == y, probs[np.arange(len(y)), pred], eligible, accuracy, delta,
                                               rule)
    policy.set_thresholds, policy.set_coverage = set_thresholds(probs, y, coverage), coverage
    calls = policy.apply(probs, classes)
    return {"accept_threshold": policy.accept_threshold, "blast_threshold": policy.blast_threshold,
            "blast_weight": policy.blast_weight, "set_thresholds": policy.set_thresholds,
            "targets": {"blast_recall": recall, "blast_catch": catch, "accepted_accuracy": accuracy, "delta": delta,
                        "set_coverage": coverage, "accept_rule": rule},
            "on_calibration_cells": decision_metrics(calls.decision, pred, y, classes, calls.in_set)}


def decision_metrics(decisions: np.ndarray, pred: np.ndarray, y: np.ndarray, classes: Sequence[str],
                     in_set: Optional[np.ndarray] = None, usual: Optional[np.ndarray] = None) -> dict:
    """Blast recall, accepted share and accuracy, blast catch rate (predicted BLA or flagged), share of each
    decision, and the prediction sets' coverage and mean size over the ``usual`` cells (default: all);
    ``pred``: the predicted class indices, ``in_set``: :meth:`Policy.apply`'s ``in_set``."""
    correct = pred == y
    acc = decisions == "accepted"
    out = {"cells": int(len(y)), "accepted_share": round(float(acc.mean()), 4),
           "accepted_accuracy": round(float(correct[acc].mean()), 4) if acc.any() else None,
           **{f"{d}_share": round(float((decisions == d).mean()), 4) for d in DECISIONS[1:]}}
    rows = np.ones(len(y), bool) if usual is None else np.asarray(usual, dtype=bool)
    if in_set is not None and rows.any():
        sizes = in_set[rows].sum(axis=1)
        out.update({"set_cells": int(rows.sum()),
                    "set_coverage": round(float(in_set[np.arange(len(y)), y][rows].mean()), 4),
                    "set_mean_size": round(float(sizes.mean()), 3),
                    "set_single_share": round(float((sizes == 1).mean()), 4)})
    if BLAST in classes and (y == list(classes).index(BLAST)).any():
        b = list(classes).index(BLAST)
        blasts = y == b
        caught = (pred[blasts] == b) | (decisions[blasts] == "possible-blast")
        out["blasts"] = int(blasts.sum())
        out["blast_recall"] = round(float((pred[blasts] == b).mean()), 4)
        # what favouring blasts costs: other cells called blasts, as a share of the non-blasts
        out["non_blasts_called_blast"] = round(float((pred[~blasts] == b).mean()), 4) if (~blasts).any() else None
        out["blast_catch"] = round(float(caught.mean()), 4)
        out["blasts_missed_unflagged"] = int((~caught).sum())
        # the worst case: a blast called something else and accepted, so no person looks at it
        out["blasts_accepted_as_other"] = int((~caught & (decisions[blasts] == "accepted")).sum())
    return out

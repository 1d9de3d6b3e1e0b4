"""The review policy: blast catch and accepted accuracy hold on fresh cells of the same kind, the
decision is written by predict and evaluate, and calibrate fits it from cross-validation logits."""

import csv
import shutil

import numpy as np
import pytest

from marrowscope.classes import CLASSES
from marrowscope.policy import Policy, decision_metrics, fit_policy

B = CLASSES.index("BLA")


def _cells(n: int, seed: int):
    """Cells whose chance of being right grows with the model's confidence (as a calibrated model's
    does), with blasts sometimes mistaken for promyelocytes at a moderate P(BLA)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    conf = rng.beta(8, 1, n)
    right = rng.random(n) < conf ** 0.25  # confident cells are nearly always right
    pred = np.where(right, y, (y + rng.integers(1, len(CLASSES), n)) % len(CLASSES))
    probs = np.full((n, len(CLASSES)), 0.0)
    probs[np.arange(n), pred] = conf
    rest = (1 - conf) / (len(CLASSES) - 1)
    probs += np.where(probs == 0, rest[:, None], 0)
    missed_blast = (y == B) & (pred != B)
    probs[missed_blast, B] = rng.uniform(0.1, 0.9, missed_blast.sum()) * (1 - conf[missed_blast])  # doubt -> BLA
    probs /= probs.sum(1, keepdims=True)
    return probs, y


def test_fitted_policy_keeps_its_targets_on_new_cells():
    probs, y = _cells(3000, 0)
    fitted = fit_policy(probs, y, CLASSES, catch=0.97, accuracy=0.97, delta=0.1)
    policy = Policy.from_settings(fitted)
    assert policy.fitted and 0.3 <= policy.accept_threshold <= 1.0 and 0 < policy.blast_threshold < 1
    new_probs, new_y = _cells(20000, 1)
    m = decision_metrics(policy.decide(new_probs, CLASSES), new_probs, new_y, CLASSES)
    assert m["blast_catch"] >= 0.96  # 97% target, finite-sample noise of one draw
    assert m["accepted_accuracy"] >= 0.965 and m["accepted_share"] > 0.2
    # without the blast rule these missed blasts would go unflagged
    plain = decision_metrics(Policy(policy.accept_threshold).decide(new_probs, CLASSES), new_probs, new_y, CLASSES)
    assert plain["blast_catch"] < m["blast_catch"]


def test_policy_accepts_nothing_when_no_threshold_is_accurate_enough():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(CLASSES)), 2000)
    y = rng.integers(0, len(CLASSES), 2000)  # labels unrelated to the predictions
    fitted = fit_policy(probs, y, CLASSES)
    assert fitted["accept_threshold"] > 1
    assert set(Policy.from_settings(fitted).decide(probs, CLASSES)) <= {"review", "possible-blast"}


def test_decisions_possible_blast_wins_and_unfitted_rule():
    p = np.array([[0.30, 0.0, 0.0, 0.0, 0.0, 0.0, 0.70],   # PMO, but a blast cannot be ruled out
                  [0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.99],   # PMO, sure
                  [0.05, 0.5, 0.45, 0.0, 0.0, 0.0, 0.0]])  # unsure
    d = Policy(0.9, 0.2, True).decide(p, CLASSES)
    assert list(d) == ["possible-blast", "accepted", "review"]
    assert list(Policy().decide(p, CLASSES)) == ["accepted", "accepted", "review"]  # top >= 0.6 accepted


def test_calibrate_from_oof_then_predict_and_evaluate_write_decisions(tmp_path, tiny_run):
    from marrowscope.calibrate import calibrate
    from marrowscope.cli import main
    from marrowscope.predict import Predictor

    model = shutil.copytree(tiny_run / "model", tmp_path / "m")
    probs, y = _cells(1500, 2)
    oof = tmp_path / "oof.npz"
    np.savez(oof, logits=np.log(probs)[None], y=y, classes=np.array(CLASSES))
    r = calibrate(Predictor(model), oof=oof, tta=False)
    assert "out-of-fold" in r["on"] and r["images"] == 1500
    assert Predictor(model).policy.fitted
    assert main(["evaluate", "--model", str(model), str(tiny_run / "manifest.csv"), "--split", "test",
                 "--out", str(tmp_path / "ev")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "ev" / "predictions.csv")))
    assert rows and {r["decision"] for r in rows} <= {"accepted", "review", "possible-blast"}
    import json

    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {"accepted_share", "accepted_accuracy", "blast_catch"} <= set(m["decisions"])
    images = sorted((tiny_run.parent / "cells" / "BLA").iterdir())[:3]
    assert main(["predict", "--model", str(model), *map(str, images), "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 3 and all(r["decision"] in ("accepted", "review", "possible-blast") for r in rows)


def test_calibrate_refuses_oof_of_other_classes(tmp_path, tiny_model):
    from marrowscope.calibrate import calibrate
    from marrowscope.errors import MarrowscopeError
    from marrowscope.predict import Predictor

    oof = tmp_path / "oof.npz"
    np.savez(oof, logits=np.zeros((1, 4, 3)), y=np.zeros(4, int), classes=np.array(["A", "B", "C"]))
    with pytest.raises(MarrowscopeError, match="model's classes"):
        calibrate(Predictor(tiny_model), oof=oof, write=False)

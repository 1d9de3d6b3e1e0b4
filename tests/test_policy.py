"""The review policy: blast catch and accepted accuracy hold on fresh cells of the same kind, the
decision is written by predict and evaluate, and calibrate fits it from cross-validation logits."""

import csv
import shutil

import numpy as np
import pytest

from marrowscope.core.classes import CLASSES
from marrowscope.core.policy import Policy, decision_metrics, fit_policy
from marrowscope.core.predict import decide

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
    fitted = fit_policy(probs, y, CLASSES, catch=0.97, accuracy=0.97, delta=0.1, recall=0)
    policy = Policy.from_settings(fitted)
    assert policy.blast_weight == 1.0  # recall 0: the most probable class
    assert policy.fitted and 0.3 <= policy.accept_threshold <= 1.0 and 0 < policy.blast_threshold < 1
    new_probs, new_y = _cells(20000, 1)
    m = decision_metrics(policy.decide(new_probs, CLASSES), policy.classify(new_probs, CLASSES), new_y, CLASSES)
    assert m["blast_catch"] >= 0.96  # 97% target, finite-sample noise of one draw
    assert m["accepted_accuracy"] >= 0.965 and m["accepted_share"] > 0.2
    # without the blast rule these missed blasts would go unflagged
    plain = decision_metrics(Policy(policy.accept_threshold).decide(new_probs, CLASSES), new_probs.argmax(1), new_y,
                             CLASSES)
    assert plain["blast_catch"] < m["blast_catch"]


def _doubtful_blasts(n: int, seed: int):
    """Cells called right 80% of the time, where a missed blast keeps a P(BLA) of 40-90% of the leading
    (wrong) class's probability: the blasts a cost-weighted call can win back."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    wrong = (y + rng.integers(1, len(CLASSES), n)) % len(CLASSES)
    pred = np.where(rng.random(n) < 0.8, y, wrong)
    logits = rng.normal(0, 0.3, (n, len(CLASSES)))
    logits[np.arange(n), pred] += 2.0
    blast_missed = (y == B) & (pred != B)
    ratio = rng.uniform(0.4, 0.9, blast_missed.sum())
    logits[blast_missed, B] = logits[blast_missed, pred[blast_missed]] + np.log(ratio)
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True), y


def test_blast_weight_reaches_its_recall_on_new_cells_and_only_favours_blasts():
    probs, y = _doubtful_blasts(4000, 0)
    fitted = fit_policy(probs, y, CLASSES, recall=0.9)
    policy = Policy.from_settings(fitted)
    assert 1 < policy.blast_weight < 3 and fitted["targets"]["blast_recall"] == 0.9
    new_probs, new_y = _doubtful_blasts(20000, 1)
    pred = policy.classify(new_probs, CLASSES)
    plain = new_probs.argmax(1)
    m = decision_metrics(policy.decide(new_probs, CLASSES), pred, new_y, CLASSES)
    assert m["blast_recall"] >= 0.88 > (plain[new_y == B] == B).mean() + 0.05  # 90% target, one draw's noise
    assert m["non_blasts_called_blast"] > (plain[new_y != B] == B).mean()  # the price, reported
    changed = pred != plain
    assert changed.any() and (pred[changed] == B).all()  # it only ever turns calls into blasts
    assert fitted["on_calibration_cells"]["blast_recall"] >= 0.9


def test_a_cell_called_a_blast_below_the_top_is_not_accepted_and_says_why():
    from marrowscope.apps.views import cell_advice

    p = np.array([[0.30, 0.0, 0.45, 0.0, 0.0, 0.0, 0.25],   # LYT leads, but P(BLA) >= 1/2 of it
                  [0.20, 0.0, 0.45, 0.0, 0.0, 0.0, 0.35],   # P(BLA) below half the lead: LYT
                  [0.0, 0.0, 0.97, 0.0, 0.0, 0.0, 0.03]])
    policy = Policy(0.4, 0.1, True, blast_weight=2.0)
    assert [CLASSES[i] for i in policy.classify(p, CLASSES)] == ["BLA", "LYT", "LYT"]
    assert [CLASSES[i] for i in policy.classify(p, CLASSES, np.array([False, True, True]))] == ["LYT", "LYT", "LYT"]
    assert "Called a blast" not in cell_advice(policy, CLASSES, decide("x", p[0], CLASSES, policy, unusual=True))
    # accepted by the called class's probability (0.30 < 0.4); the second is LYT, but its P(BLA) flags it
    assert list(policy.decide(p, CLASSES)) == ["review", "possible-blast", "accepted"]
    calls = policy.apply(p[0], CLASSES)
    assert (CLASSES[int(calls.pred[0])], float(calls.prob[0])) == ("BLA", 0.30)
    text = cell_advice(policy, CLASSES, decide("x", p[0], CLASSES, policy))
    assert "Called a blast" in text and "1/2.00" in text and "45%" in text
    assert "called a blast when P(BLA) >= 1/2.00" in policy.describe()
    assert Policy.from_settings({"accept_threshold": 0.9, "blast_threshold": 0.1}).blast_weight == 1.0  # older folders


def test_prediction_sets_keep_their_coverage_on_new_cells():
    probs, y = _doubtful_blasts(3000, 0)
    fitted = fit_policy(probs, y, CLASSES, coverage=0.9)
    policy = Policy.from_settings(fitted)
    assert len(policy.set_thresholds) == len(CLASSES) and policy.set_coverage == 0.9
    assert fitted["on_calibration_cells"]["set_coverage"] >= 0.9
    new_probs, new_y = _doubtful_blasts(20000, 1)
    m = decision_metrics(policy.decide(new_probs, CLASSES), policy.classify(new_probs, CLASSES), new_y, CLASSES,
                         policy.apply(new_probs, CLASSES).in_set)
    # 90% target, one draw's noise; the sets stay well short of all seven classes
    assert 0.88 <= m["set_coverage"] <= 0.93 and 1 < m["set_mean_size"] < len(CLASSES) - 2
    accuracy = (new_probs.argmax(1) == new_y).mean()
    assert m["set_coverage"] > accuracy + 0.05  # a set is worth more than the top class alone
    in_set = policy.apply(new_probs, CLASSES).in_set
    for c in range(len(CLASSES)):  # class by class, not only on average: blasts too
        assert in_set[new_y == c, c].mean() >= 0.87, CLASSES[c]
    wider = Policy.from_settings(fit_policy(probs, y, CLASSES, coverage=0.97))
    assert all(w <= t for w, t in zip(wider.set_thresholds, policy.set_thresholds))
    p = np.array([0.05, 0.0, 0.5, 0.0, 0.0, 0.0, 0.45])
    per_class = [0.04, 0.3, 0.3, 0.3, 0.3, 0.3, 0.5]
    assert Policy(0.9, set_thresholds=per_class).apply(p, CLASSES).sets[0] == ["LYT", "BLA"]  # most probable first
    assert Policy(0.9, set_thresholds=per_class).apply(p, CLASSES, [False]).sets[0] is None
    assert Policy(0.9).apply(p, CLASSES).sets[0] is None  # a folder calibrated before sets
    from marrowscope.apps.views import cell_advice

    policy = Policy(0.9, set_thresholds=[0.3] * 7, set_coverage=0.95)
    text = cell_advice(policy, CLASSES, decide("x", p, CLASSES, policy))
    assert "Prediction set (holds the type of 95%" in text and "Lymphocyte" in text and "Promyelocyte" in text


def test_prediction_sets_cover_a_hard_class_as_well_as_the_easy_ones():
    """Blasts are the hardest class: one threshold for all classes would leave them short."""
    def cells(n, seed):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, len(CLASSES), n)
        own = np.where(y == B, rng.uniform(0.05, 0.6, n), rng.uniform(0.6, 1.0, n))
        probs = rng.dirichlet(np.ones(len(CLASSES)), n) * (1 - own)[:, None]
        probs[np.arange(n), y] = own
        return probs / probs.sum(1, keepdims=True), y

    probs, y = cells(4000, 0)
    policy = Policy.from_settings(fit_policy(probs, y, CLASSES, coverage=0.9))
    new_probs, new_y = cells(20000, 1)
    in_set = policy.apply(new_probs, CLASSES).in_set
    assert in_set[new_y == B, B].mean() >= 0.88
    one = np.quantile(probs[np.arange(len(y)), y], 0.1)  # the single threshold of the same coverage
    assert (new_probs[new_y == B, B] >= one).mean() < 0.8


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
    from marrowscope.apps.cli import main
    from marrowscope.core.predict import Predictor
    from marrowscope.fit.calibrate import calibrate

    model = shutil.copytree(tiny_run / "model", tmp_path / "m")
    probs, y = _cells(1500, 2)
    oof = tmp_path / "oof.npz"
    np.savez(oof, logits=np.log(probs)[None], y=y, classes=np.array(CLASSES))
    r = calibrate(Predictor(model), oof=oof, tta=False)
    assert "out-of-fold" in r["on"] and r["images"] == 1500
    # fold models are not the network that ships: the accept threshold keeps Bonferroni's margin
    assert r["no_tta"]["policy"]["targets"]["accept_rule"] == "bonferroni"
    assert Predictor(model).policy.fitted
    assert main(["evaluate", "--model", str(model), str(tiny_run / "manifest.csv"), "--split", "test",
                 "--out", str(tmp_path / "ev")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "ev" / "predictions.csv")))
    assert rows and {r["decision"] for r in rows} <= {"accepted", "review", "possible-blast"}
    t = dict(zip(CLASSES, Predictor(model).policy.set_thresholds))
    for r in rows:  # each set: the classes at or above their fitted thresholds (CSV probabilities are rounded)
        got = set(filter(None, r["set"].split("|")))
        if r["unusual"] == "yes":
            assert not got  # no set for unusual images
        else:
            above = {c for c in CLASSES if float(r[c]) > t[c] + 1e-4}
            assert r["predicted"] in got and above <= got <= {c for c in CLASSES if float(r[c]) > t[c] - 1e-4} | {
                r["predicted"]}
    import json

    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {"accepted_share", "accepted_accuracy", "blast_catch", "set_coverage", "set_mean_size"} <= \
        set(m["decisions"])
    images = sorted((tiny_run.parent / "cells" / "BLA").iterdir())[:3]
    assert main(["predict", "--model", str(model), *map(str, images), "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 3 and all(r["decision"] in ("accepted", "review", "possible-blast") for r in rows)


def test_every_writer_uses_the_weighted_call(tmp_path, tiny_run):
    """A huge blast weight calls every cell a blast: predict's CSV and counts, evaluate's CSV and metrics,
    and the app's batch table must all say so, while top1 stays the most probable class."""
    import json

    from marrowscope.apps.app import batch
    from marrowscope.apps.cli import main
    from marrowscope.core.artifacts import write_settings
    from marrowscope.core.batch import run_batch
    from marrowscope.core.classes import display_name
    from marrowscope.core.predict import Predictor

    model = shutil.copytree(tiny_run / "model", tmp_path / "m")
    settings = {"accept_threshold": 0.5, "blast_threshold": None, "blast_weight": 1e6}
    write_settings(model, policy={"tta": settings, "no_tta": settings})
    images = [p for c in ("EOS", "NGS") for p in sorted((tiny_run.parent / "cells" / c).iterdir())[:3]]
    assert main(["predict", "--model", str(model), *map(str, images), "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert {r["predicted"] for r in rows} == {"BLA"} and {r["top1"] for r in rows} != {"BLA"}
    assert {r["unusual"] for r in rows} == {"no"}  # the weight holds only where the domain check finds usual
    for r in rows:  # the probability shown is the called class's, not the top one's
        tops = {r[f"top{i}"]: float(r[f"p{i}"]) for i in (1, 2, 3)}
        assert "BLA" not in tops or float(r["probability"]) == tops["BLA"]
    counts = {r["name"]: int(r["cells"]) for r in csv.DictReader(open(tmp_path / "p_counts.csv"))
              if r["count"] == "all cells"}
    assert counts["BLA"] == 6
    assert main(["evaluate", "--model", str(model), str(tiny_run / "manifest.csv"), "--split", "test",
                 "--out", str(tmp_path / "ev")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "ev" / "predictions.csv")))
    usual = [r for r in rows if r["unusual"] == "no"]
    assert usual and {r["predicted"] for r in usual} == {"BLA"}
    assert all(r["predicted"] == max(CLASSES, key=lambda c: float(r[c])) for r in rows if r["unusual"] == "yes")
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["per_class"]["BLA"]["recall"] == m["decisions"]["blast_recall"] > 0
    # the metrics count the same calls as the CSV
    assert sum(row[B] for row in m["confusion_matrix"]) == sum(r["predicted"] == "BLA" for r in rows)
    table = batch(Predictor(model), [str(p) for p in images])[0]
    assert {r[1] for r in table} == {display_name("BLA")}
    # images unlike the training ones get the most probable class (the weight was fitted on usual ones)
    odd = Predictor(model)
    odd.unusual_above = -np.inf
    rows = run_batch(odd, images).rows
    assert all(r["unusual"] == "yes" and r["predicted"] == r["top1"] for r in rows)


def test_calibrate_refuses_oof_of_other_classes(tmp_path, tiny_model):
    from marrowscope.core.errors import MarrowscopeError
    from marrowscope.core.predict import Predictor
    from marrowscope.fit.calibrate import calibrate

    oof = tmp_path / "oof.npz"
    np.savez(oof, logits=np.zeros((1, 4, 3)), y=np.zeros(4, int), classes=np.array(["A", "B", "C"]))
    with pytest.raises(MarrowscopeError, match="model's classes"):
        calibrate(Predictor(tiny_model), oof=oof, write=False)


@pytest.mark.parametrize("flag, value", [("--blast-recall", "1.2"), ("--blast-recall", "-0.1"), ("--blast-catch", "0"),
                                         ("--set-coverage", "1")])
def test_calibrate_targets_out_of_range_are_a_sentence_and_nothing_is_written(tmp_path, tiny_model, capsys, flag,
                                                                               value):
    from marrowscope.apps.cli import main

    before = (tiny_model / "config.json").read_bytes()
    assert main(["calibrate", "--model", str(tiny_model), "--oof", str(tmp_path / "none.npz"), flag, value]) == 2
    assert f"{flag} must be a fraction" in capsys.readouterr().err
    assert (tiny_model / "config.json").read_bytes() == before


def test_an_unusual_cell_is_never_accepted():
    """The accept guarantee was fitted on cells like the training cells: an unusual image's cell, however
    sure, goes to review; a possible blast stays a possible blast."""
    from marrowscope.core.predict import decide

    policy = Policy(0.5, 0.2, True)
    sure = np.array([0.0, 0.0, 0.99, 0.0, 0.0, 0.01, 0.0])
    doubt = np.array([0.3, 0.0, 0.7, 0.0, 0.0, 0.0, 0.0])
    assert decide("a", sure, CLASSES, policy, unusual=False).decision == "accepted"
    assert decide("a", sure, CLASSES, policy, unusual=None).decision == "accepted"  # no domain check
    assert decide("a", sure, CLASSES, policy, unusual=True).decision == "review"
    assert decide("a", doubt, CLASSES, policy, unusual=True).decision == "possible-blast"
    calls = policy.apply(np.stack([sure, sure]), CLASSES, np.array([True, False]))
    assert list(calls.decision) == ["accepted", "review"]


def test_the_app_says_why_a_sure_cell_of_an_unusual_image_is_not_accepted():
    from marrowscope.apps.views import cell_advice
    from marrowscope.core.predict import decide

    policy = Policy(0.5, None, True)
    sure = np.array([0.0, 0.0, 0.99, 0.0, 0.0, 0.01, 0.0])
    text = cell_advice(policy, CLASSES, decide("a", sure, CLASSES, policy, unusual=True))
    assert "unlike the images the model learnt from" in text and "not sure enough" not in text
    assert "accepted" in cell_advice(policy, CLASSES, decide("a", sure, CLASSES, policy, unusual=False))


def test_fixed_sequence_begins_where_a_test_can_pass_and_stops_at_the_first_failure():
    from marrowscope.core.policy import fixed_sequence

    top = np.linspace(1.0, 0.3, 2000)
    everyone = np.ones(2000, bool)
    right = np.ones(2000, bool)
    right[1] = False  # one error among the most confident few: a test begun there would fail and end it all
    assert fixed_sequence(right, top, everyone, 0.97, 0.1) < 0.35
    right[np.arange(2000) % 5 == 0] = False  # 80% right from the top: no threshold reaches 97%
    assert fixed_sequence(right, top, everyone, 0.97, 0.1) > 1
    right = np.ones(2000, bool)
    right[(top < 0.6)] = np.arange((top < 0.6).sum()) % 4 != 0  # 75% right below 0.6, every cell right above it
    chosen = fixed_sequence(right, top, everyone, 0.97, 0.1)
    accepted = top >= chosen
    assert 0.5 <= chosen <= 0.6 and right[accepted].mean() >= 0.97  # a few of the worse cells, not many
    assert fixed_sequence(right, top, everyone, 1.0, 0.1) > 1  # no count of cells shows zero risk


def test_fixed_sequence_accepts_at_least_as_much_as_bonferroni_and_keeps_the_accuracy():
    """Both rules on the same cells: the fine sequence at the full delta reaches lower thresholds than the
    coarse grid at delta / 17, and either way the accepted cells are at least 97% right here."""
    from marrowscope.core.policy import accept_threshold

    rng = np.random.default_rng(0)
    top = rng.uniform(0.3, 1.0, 3000)
    right = rng.uniform(size=3000) < np.clip((top - 0.3) * 3, 0, 1) ** 0.2  # surer cells are more often right
    everyone = np.ones(3000, bool)
    fixed = accept_threshold(right, top, everyone, 0.97, 0.1, "fixed-sequence")
    bonf = accept_threshold(right, top, everyone, 0.97, 0.1, "bonferroni")
    assert fixed < bonf <= 1.0
    for t in (fixed, bonf):
        assert right[top >= t].mean() >= 0.97

"""Temperature scaling: the fit itself, and the model folder's settings it writes."""

import shutil

import numpy as np
import pytest

from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.predict import Predictor


def test_temperature_fit_recovers_a_known_scale():
    from marrowscope.core.predict import probs_from_logits
    from marrowscope.fit.calibrate import fit_temperature

    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 3, (4000, 5))
    y = np.array([rng.choice(5, p=p) for p in probs_from_logits(true_logits[None])])
    # a network twice as confident as it should be: the fitted temperature undoes it
    assert fit_temperature(2.0 * true_logits[None], y) == pytest.approx(2.0, rel=0.1)


def test_calibrate_writes_temperature_and_refuses_test(tmp_path, tiny_run):

    from marrowscope.fit.calibrate import calibrate

    model = shutil.copytree(tiny_run / "model", tmp_path / "m")
    with pytest.raises(MarrowscopeError, match="not on test"):
        calibrate(Predictor(model), tiny_run / "manifest.csv", "test")
    r = calibrate(Predictor(model), tiny_run / "manifest.csv", "val", tta=True)
    # one temperature per inference setting, each applied when the model runs that way
    assert Predictor(model).tta is True
    assert Predictor(model).temperature == pytest.approx(r["tta"]["temperature"], abs=1e-4)
    assert Predictor(model, tta=False).temperature == pytest.approx(r["no_tta"]["temperature"], abs=1e-4)
    assert 0.25 <= r["tta"]["temperature"] <= 8 and "val split" in r["on"] and r["images"] > 0
    # the review policy is fitted beside each temperature and used by the Predictor of that setting
    assert Predictor(model).policy.fitted and Predictor(model, tta=False).policy.fitted
    # fitted on this network's own held-out cells: fixed-sequence testing, stored with the policy
    assert r["no_tta"]["policy"]["targets"]["accept_rule"] == "fixed-sequence"


def test_calibrate_goes_on_past_unreadable_files(tmp_path, tiny_model):
    from marrowscope.fit.calibrate import calibrate
    from tests.conftest import make_dataset

    data = make_dataset(tmp_path / "d", per_class=8)
    (data / "BLA" / "zz_broken.png").write_bytes(b"broken")
    r = calibrate(Predictor(tiny_model, backend="torch"), data, "val", write=False)
    assert r["images"] == 7  # one validation image per class, the broken file reported instead
    assert [u.source.split("/")[-1] for u in r["unreadable"]] == ["zz_broken.png"]

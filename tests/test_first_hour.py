"""A lab user's first hour: every column explained where they look, flags that act or refuse, the counts
file, quiet output, and the one-call Python API."""

import csv
import os
import re
import shutil
import warnings
from pathlib import Path

import pytest

import marrowscope
from marrowscope.apps.cli import adapt_report, build_parser, main
from marrowscope.core.artifacts import write_settings
from marrowscope.core.batch import BatchResult
from marrowscope.core.classes import CLASSES
from marrowscope.core.columns import COLUMNS
from marrowscope.core.policy import DECISIONS
from tests.conftest import make_cell_folder, make_dataset

README = Path(__file__).resolve().parents[1] / "README.md"


def _column_names(top_k: int) -> set[str]:
    """The CSV's columns, with topN and pN named as COLUMNS names them."""
    return {"topN, pN" if re.fullmatch(r"(top|p)\d+", c) else c for c in BatchResult(list(CLASSES), top_k).columns()}


def test_every_csv_column_is_explained_in_predict_help_and_the_readme(capsys):
    assert _column_names(3) == set(COLUMNS)  # nothing written that is not explained, nothing explained twice
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--help"])
    helped = capsys.readouterr().out
    readme = README.read_text()
    for name in COLUMNS:
        assert f"  {name}: " in helped, name
        assert f"| `{name}` |" in readme, name
    assert "review" not in BatchResult(list(CLASSES)).columns()  # it only repeated decision != accepted


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    return make_cell_folder(tmp_path_factory.mktemp("lab") / "cells", 14, seed=900)


@pytest.fixture(scope="module")
def policy_model(tiny_model, tmp_path_factory):
    """The tiny model with a fitted policy that accepts every call of probability 0.2 or more."""
    model = shutil.copytree(tiny_model, tmp_path_factory.mktemp("pol") / "m")
    settings = {"accept_threshold": 0.2, "blast_threshold": None, "blast_weight": 1.0}
    write_settings(model, policy={"tta": settings, "no_tta": settings})
    return model


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_counts_file_gives_all_and_accepted_differentials_and_the_decisions(policy_model, cells, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict", str(cells), "--model", str(policy_model), "--out", str(out), "--quiet"]) == 0
    rows, counts = _rows(out), _rows(tmp_path / "p_counts.csv")
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 14 and [r["status"] for r in rows].count("error") == 1
    assert {r["count"] for r in counts} == {"all cells", "accepted cells", "decision"}
    for kind, chosen in (("all cells", ok), ("accepted cells", [r for r in ok if r["decision"] == "accepted"])):
        got = {r["name"]: int(r["cells"]) for r in counts if r["count"] == kind}
        assert list(got) == list(CLASSES) and got == {c: sum(r["predicted"] == c for r in chosen) for c in CLASSES}
    decisions = {r["name"]: int(r["cells"]) for r in counts if r["count"] == "decision"}
    assert list(decisions) == list(DECISIONS) and decisions == {d: sum(r["decision"] == d for r in ok)
                                                                for d in DECISIONS}
    said = capsys.readouterr().out
    assert "p_counts.csv" in said and "predict --help" in said


def test_review_below_acts_on_top_of_a_fitted_policy_or_refuses(policy_model, cells, tmp_path, capsys):
    plain, strict = tmp_path / "plain.csv", tmp_path / "strict.csv"
    assert main(["predict", str(cells), "--model", str(policy_model), "--out", str(plain), "--quiet"]) == 0
    assert main(["predict", str(cells), "--model", str(policy_model), "--out", str(strict), "--quiet",
                 "--review-below", "0.99"]) == 0
    before = [r["decision"] for r in _rows(plain) if r["status"] == "ok"]
    after = [r["decision"] for r in _rows(strict) if r["status"] == "ok"]
    assert before.count("accepted") > after.count("accepted")  # the flag changed the output
    assert all(a == "review" or a == b for a, b in zip(after, before))  # only ever stricter
    assert all(float(r["probability"]) >= 0.99 for r in _rows(strict) if r["decision"] == "accepted")
    capsys.readouterr()
    assert main(["predict", str(cells), "--model", str(policy_model), "--review-below", "1.5"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err


@pytest.mark.parametrize("flag, differs", [
    (["--top-k", "2"], lambda a, b: "top3" in a[0] and "top3" not in b[0]),
    (["--tta"], lambda a, b: [r["p1"] for r in a] != [r["p1"] for r in b]),
    (["--pixel-size", "0.2"], lambda a, b: any("given" in r["scale"] for r in b) and not any("given" in r["scale"]
                                                                                           for r in a)),
])
def test_predict_flags_change_the_output(tiny_model, cells, tmp_path, flag, differs):
    model = shutil.copytree(tiny_model, tmp_path / "m")
    write_settings(model, scale={"pixel_size_um": 0.1, "field_px": 48, "how": "set by the test"})
    base, changed = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["predict", str(cells), "--model", str(model), "--out", str(base), "--quiet"]) == 0
    assert main(["predict", str(cells), "--model", str(model), "--out", str(changed), "--quiet", *flag]) == 0
    a = [r for r in _rows(base) if r["status"] == "ok"]
    b = [r for r in _rows(changed) if r["status"] == "ok"]
    assert differs(a, b), flag


def test_python_api_gives_the_rows_of_the_csv(policy_model, cells, tmp_path):
    rows = marrowscope.classify([cells], model=policy_model)
    out = tmp_path / "p.csv"
    assert main(["predict", str(cells), "--model", str(policy_model), "--out", str(out), "--quiet"]) == 0
    written = _rows(out)
    assert [r["file"] for r in rows] == [r["file"] for r in written]
    for got, row in zip(rows, written):
        assert {k: str(v) for k, v in got.items()} == row
    bad = [r for r in rows if r["status"] == "error"]
    assert len(bad) == 1 and bad[0]["file"].endswith("broken.png") and bad[0]["error"]


def test_evaluate_on_a_lab_subset_shows_no_raw_library_warning(tiny_model, tmp_path, capfd):
    data = make_dataset(tmp_path / "lab", per_class=3, classes=CLASSES[1:4])  # a lab without blasts
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["evaluate", str(data), "--model", str(tiny_model), "--split", "all", "--out",
                     str(tmp_path / "ev")]) == 0
    assert not [w for w in caught if "sklearn" in (w.filename or "")], [str(w.message) for w in caught]
    assert "y_pred contains classes" not in capfd.readouterr().err


def test_a_missing_relative_model_says_where_it_looked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(tmp_path), "--model", "models/mine"]) == 2
    assert str(tmp_path / "models" / "mine") in capsys.readouterr().err


def test_the_bundled_model_is_found_from_any_folder(tmp_path, monkeypatch):
    from marrowscope.core.artifacts import DEFAULT_MODEL, resolve_model_dir

    if not (DEFAULT_MODEL / "config.json").is_file():
        pytest.skip("no bundled model in this installation")
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir(None) == DEFAULT_MODEL and os.path.isabs(DEFAULT_MODEL)


def test_adapt_says_what_it_did():
    r = {"source": "default", "data": "lab", "cells": 112, "per_class": {"LYT": 16, "EOS": 16}, "replayed": 210,
         "held_out": 20, "held_out_per_class": {"LYT": 4, "EOS": 4}, "accuracy_before": 0.6, "accuracy_after": 0.9,
         "interval_before": [0.39, 0.78], "interval_after": [0.7, 0.97], "blast_weight_dropped": True, "home": "home"}
    text = adapt_report(r, "new")
    assert "EOS 16, LYT 16" in text and "held out 20 cells" in text and "EOS 4, LYT 4" in text
    assert "0.60 before (95% interval 0.39-0.78)" in text and "one cell is 5 points" in text
    assert "cells get no blast weight" in text and "domain check was refitted" in text
    assert "kept in home/" in text and "network column says home" in text
    assert "no blast weight" not in adapt_report({**r, "blast_weight_dropped": False}, "new")
    assert "home/" not in adapt_report({**r, "home": None}, "new")


@pytest.mark.parametrize("flag, differs", [
    (["--split", "val"], lambda a, b: (a["split"], b["split"]) == ("test", "val") and a["accuracy"] != b["accuracy"]),
    (["--tta"], lambda a, b: a["tta"] is False and b["tta"] is True and a["log_loss"] != b["log_loss"]),
    (["--pixel-size", "0.2"], lambda a, b: a["log_loss"] != b["log_loss"]),
    (["--review-below", "0.99"], lambda a, b: a["decisions"]["accepted_share"] > b["decisions"]["accepted_share"]),
])
def test_evaluate_flags_change_the_report(tiny_run, tmp_path, flag, differs):
    import json

    model = shutil.copytree(tiny_run / "model", tmp_path / "m")
    write_settings(model, scale={"pixel_size_um": 0.1, "field_px": 48, "how": "set by the test"})
    base = ["evaluate", str(tiny_run / "manifest.csv"), "--model", str(model), "--split", "test"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    if flag[0] == "--split":
        base.remove("--split")
        base.remove("test")
    assert main([*base, "--out", str(tmp_path / "b"), *flag]) == 0
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("a", "b"))
    assert differs(a, b), flag

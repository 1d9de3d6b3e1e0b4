"""Adapting a model to a new lab: a new model folder, the source untouched, and bad input refused."""

import hashlib
import io
import re
import shutil
import zipfile

import pytest

from marrowscope.apps.cli import main
from marrowscope.core.artifacts import read_model_info, write_settings
from marrowscope.core.errors import MarrowscopeError
from marrowscope.fit.adapt import adapt
from tests.conftest import make_dataset, synthetic_cell


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.slow
def test_adapts_on_a_subset_of_classes_into_a_new_folder(tiny_model, tmp_path):
    before = _digest(tiny_model)
    cells = make_dataset(tmp_path / "lab", per_class=6, classes=("EOS", "LYT"))
    (cells / "EOS" / "broken.png").write_bytes(b"not a png")
    r = adapt(cells, tiny_model, tmp_path / "ours", epochs=1, workers=0)
    out = tmp_path / "ours"
    info = read_model_info(out)
    assert info.classes == read_model_info(tiny_model).classes and info.extra["adapted"]["cells"] == 10
    assert r["held_out"] == 2 and r["replayed"] > 0 and 0 <= r["accuracy_after"] <= 1
    assert any("broken.png" in u["path"] for u in r["unreadable"])
    assert (out / "domain.safetensors").is_file()
    # refitted on what it was fine-tuned on: the new lab's cells are its training images now
    assert f"of {10 + r['replayed']} training images" in info.focus["how"]
    assert "## Adapted from model on 10 cells of lab" in (out / "MODEL_CARD.md").read_text()
    assert _digest(tiny_model) == before  # the source model folder is never modified


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def _png(k):
    b = io.BytesIO()
    synthetic_cell(k % 7, k).save(b, "PNG")
    return b.getvalue()


@pytest.mark.parametrize("case, words", [
    ("empty", "holds no images|found: none"),
    ("single", "at least 2"),
    ("unknown", "does not know"),
    ("duplicate-zip", "more than once"),
    ("corrupt-zip", "not a readable zip"),
    ("existing-out", "already a model folder"),
])
def test_bad_input_is_a_sentence_and_nothing_is_written(tiny_model, tmp_path, case, words, capsys):
    out = tmp_path / "out"
    if case == "empty":
        data = tmp_path / "empty"
        (data / "EOS").mkdir(parents=True)
    elif case == "single":
        data = make_dataset(tmp_path / "one", per_class=1, classes=("EOS",))
    elif case == "unknown":
        data = make_dataset(tmp_path / "unk", per_class=3, classes=("EOS", "XYZ"))
    elif case == "duplicate-zip":
        data = _zip(tmp_path / "reviewed.zip", [("EOS/a.png", _png(1)), ("EOS/a.png", _png(2)),
                                                ("LYT/b.png", _png(3))])
    elif case == "corrupt-zip":
        data = tmp_path / "reviewed.zip"
        data.write_bytes(b"PK\x03\x04 truncated")
    else:
        data = make_dataset(tmp_path / "ok", per_class=3, classes=("EOS",))
        out = tiny_model
    before = _digest(tiny_model)
    assert main(["adapt", str(data), "--model", str(tiny_model), "--out", str(out), "--epochs", "1",
                 "--workers", "0"]) == 2
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("marrowscope adapt: error:")]
    assert len(line) == 1 and re.search(words, line[0]), line
    assert _digest(tiny_model) == before
    if case != "existing-out":
        assert not out.exists()


@pytest.mark.slow
def test_reviewed_zip_from_the_app_adapts_as_it_is(tiny_model, tmp_path):
    members = [(f"{c}/{k:05d}_cell.png", _png(i * 10 + k)) for i, c in enumerate(("EOS", "NGS")) for k in range(3)]
    labels = "path,label,split,sha256\n" + "".join(f"{n},{n.split('/')[0]},train,\n" for n, _ in members)
    data = _zip(tmp_path / "reviewed.zip", [*members, ("labels.csv", labels)])
    r = adapt(data, tiny_model, tmp_path / "ours", epochs=1, workers=0)
    assert r["cells"] == 6 and r["held_out"] == 0  # 3 per class: too few to hold any out


@pytest.mark.slow
def test_mix_blends_the_fine_tuned_weights_with_the_source(tiny_model, tmp_path):
    import torch

    from marrowscope.core.artifacts import load_model_folder

    cells = make_dataset(tmp_path / "lab", per_class=4, classes=("EOS", "LYT"))
    source = load_model_folder(tiny_model)[0].state_dict()
    nets = {}
    for mix in (0.0, 0.5, 1.0):
        r = adapt(cells, tiny_model, tmp_path / f"mix{mix}", epochs=2, workers=0, holdout=0, mix=mix)
        assert r["mix"] == mix
        nets[mix] = load_model_folder(tmp_path / f"mix{mix}")[0].state_dict()
    with pytest.raises(MarrowscopeError, match="between 0"):
        adapt(cells, tiny_model, tmp_path / "bad", epochs=1, workers=0, mix=1.5)
    assert not (tmp_path / "bad").exists()
    floats = [k for k, v in source.items() if v.is_floating_point()]
    moved = [k for k in floats if not torch.allclose(nets[1.0][k], source[k], atol=1e-3)]
    assert moved  # the fine-tune changed weights
    for k in moved:
        assert torch.allclose(nets[0.0][k], source[k], atol=1e-3)  # mix 0: the source itself
        assert torch.allclose(nets[0.5][k], (nets[1.0][k] + source[k]) / 2, atol=2e-3)  # halfway


@pytest.mark.slow
def test_adapted_folder_keeps_the_thresholds_but_not_the_blast_weight_nor_the_second_reading(tiny_model, tmp_path):
    source = shutil.copytree(tiny_model, tmp_path / "model")
    policy = {"accept_threshold": 0.9, "blast_threshold": 0.05, "blast_weight": 3.0}
    write_settings(source, policy={"tta": policy, "no_tta": policy}, second_reading={"zoom": 0.7, "how": "test"})
    cells = make_dataset(tmp_path / "lab", per_class=4, classes=("EOS", "LYT"))
    adapt(cells, source, tmp_path / "ours", epochs=1, workers=0)
    # the weight was fitted for the source network on images like its own: the new lab's are not
    assert read_model_info(tmp_path / "ours").policy(False) == {**policy, "blast_weight": 1.0}
    assert read_model_info(source).policy(False) == policy
    assert read_model_info(tmp_path / "ours").second_zoom is None and read_model_info(source).second_zoom == 0.7


@pytest.mark.slow
def test_adapted_domain_check_does_not_flag_both_labs_images(tiny_run, tmp_path):
    """The refitted check's threshold comes from images outside its fit: from in-fit scores it had
    flagged nearly every image of either lab."""
    from marrowscope.core.manifest import read_manifest
    from marrowscope.core.predict import Predictor

    cells = make_dataset(tmp_path / "lab", per_class=16, classes=("EOS", "LYT", "MON"))
    fresh = sorted(cells.rglob("*.png"))[1::2]  # new-lab cells the adapted folder never sees
    for f in fresh:
        f.rename(tmp_path / f.name)
    adapt(cells, tiny_run / "model", tmp_path / "ours", epochs=1, workers=0, holdout=0)
    p = Predictor(tmp_path / "ours")
    own = [s.path for s in read_manifest(tiny_run / "manifest.csv") if s.split == "test"]
    for images in (own, [tmp_path / f.name for f in fresh]):
        flagged = [r.unusual for r in p.predict_many(images)]
        assert sum(flagged) <= len(flagged) // 3, f"{sum(flagged)} of {len(flagged)} flagged"


@pytest.mark.slow
def test_adapt_says_what_it_did_and_nothing_a_lab_user_would_not_understand(tiny_model, tmp_path, capfd):
    data = make_dataset(tmp_path / "lab", per_class=10, classes=("EOS", "LYT"))
    assert main(["adapt", str(data), "--model", str(tiny_model), "--out", str(tmp_path / "new"), "--epochs", "1",
                 "--workers", "0"]) == 0
    said = capfd.readouterr()
    text = said.out + said.err
    assert "trained on 16 cells of lab (EOS 8, LYT 8)" in text and "held out 4 cells" in text
    assert "95% interval" in text and "domain check was refitted" in text
    for chatter in ("💡", "Found ", "val_dataloader", "GPU available", "TPU available", "LOCAL_RANK"):
        assert chatter not in text, chatter


def test_replayed_images_are_learnt_from_the_source_networks_own_probabilities(tiny_model, tmp_path):
    """So that a lab without blasts does not teach the network to forget them at home: the new lab's cells
    keep their labels, the replayed images carry what the source network said of them."""
    import numpy as np

    from marrowscope.core.data import scan_folder
    from marrowscope.core.predict import Predictor
    from marrowscope.fit.adapt import teacher_targets

    classes = read_model_info(tiny_model).classes
    lab = scan_folder(make_dataset(tmp_path / "lab", per_class=2, classes=("EOS", "LYT")))[0]
    home = scan_folder(make_dataset(tmp_path / "home", per_class=2))[0]
    cells, soft = teacher_targets(tiny_model, lab, home, classes, 0.5)
    assert len(cells) == len(lab) + len(home) and set(soft) == {c.rel for c in cells}
    for c in cells[: len(lab)]:
        assert soft[c.rel][classes.index(c.label)] == 1.0 and soft[c.rel].sum() == 1.0
    p = Predictor(tiny_model, tta=False, second_reading=False)
    for c in cells[len(lab):]:
        logits = p.stacked_logits([c.path])[0][0, 0]
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert np.allclose(soft[c.rel], expected, atol=1e-5)
    assert teacher_targets(tiny_model, lab, home, classes, 0.0)[1] is None


@pytest.fixture(scope="module")
def routed(tiny_run, tmp_path_factory):
    """An adapted folder of the tiny model (which has a domain check), its lab's cells unlike the home cells."""
    from tests.conftest import strange_image

    work = tmp_path_factory.mktemp("routed")
    for c in ("EOS", "LYT"):
        (work / "lab" / c).mkdir(parents=True)
        for k in range(6):
            strange_image(k + 7 * (c == "LYT")).rotate(90 * (c == "LYT")).save(work / "lab" / c / f"{k}.png")
    adapt(work / "lab", tiny_run / "model", work / "ours", epochs=1, workers=0, holdout=0)
    return work / "ours"


@pytest.mark.slow
def test_images_like_the_home_labs_keep_the_home_models_whole_prediction(tiny_run, routed, tmp_path):
    """A lab that adapts must not lose blasts at home: the source's calls, blast weight and accept rule were
    fitted on its held-out cells, so where its own domain check finds an image usual its prediction stands."""
    import numpy as np

    from marrowscope.core.artifacts import MODEL_FILES
    from marrowscope.core.manifest import read_manifest
    from marrowscope.core.predict import Predictor
    from tests.conftest import strange_image

    source = tiny_run / "model"
    assert read_model_info(routed).home == routed / "home"
    assert {n for n in MODEL_FILES if (source / n).is_file()} <= {p.name for p in (routed / "home").iterdir()}
    own = [s.path for s in read_manifest(tiny_run / "manifest.csv") if s.split == "test"]
    for k in range(4):
        strange_image(30 + k).save(tmp_path / f"new{k}.png")
    images = [*own, *sorted(tmp_path.glob("new*.png"))]
    home = {r.source: r for r in Predictor(source, second_reading=False).predict_many(images)}
    lab = {r.source: r for r in Predictor(routed, domain_check=False).predict_many(images)}  # the network alone
    results = list(Predictor(routed).predict_many(images))
    assert {r.network for r in results} == {"home", "lab"}  # both ways were taken
    for r in results:
        h = home[r.source]
        if r.network == "home":
            assert h.unusual is False and (r.call, r.decision, r.set, r.scale) == (h.call, h.decision, h.set, h.scale)
            assert np.allclose(r.probs, h.probs, atol=1e-6)
        else:
            assert h.unusual and r.network == "lab" and np.allclose(r.probs, lab[r.source].probs, atol=1e-6)
    assert all(r.network == "home" for r in results[: len(own)] if not home[r.source].unusual)
    assert all(r.network == "lab" for r in results[len(own):])
    # a folder adapted from an adapted folder keeps the first lab as home
    again = adapt(routed.parent / "lab", routed, tmp_path / "twice", epochs=1, workers=0, holdout=0)
    assert again["home"] == "home"
    twice = tmp_path / "twice" / "home"
    assert (twice / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_the_csv_and_the_app_say_which_model_read_each_image(tiny_run, routed, tmp_path):
    import csv

    from marrowscope.apps.app import classify
    from marrowscope.apps.app_models import explainer_for
    from marrowscope.core.manifest import read_manifest
    from marrowscope.core.predict import Predictor
    from tests.conftest import strange_image

    own = next(s.path for s in read_manifest(tiny_run / "manifest.csv") if s.split == "test"
               and not Predictor(tiny_run / "model").predict_one(s.path).unusual)
    strange_image(40).save(tmp_path / "new.png")
    assert main(["predict", str(own), str(tmp_path / "new.png"), "--model", str(routed),
                 "--out", str(tmp_path / "p.csv")]) == 0
    rows = {r["file"]: r["network"] for r in csv.DictReader(open(tmp_path / "p.csv"))}
    assert rows == {str(own): "home", str(tmp_path / "new.png"): "lab"}
    p = Predictor(routed)
    assert "Read by the model this one was adapted from" in classify(p, None, str(own))[2]
    assert "Read by the adapted network" in classify(p, None, str(tmp_path / "new.png"))[2]
    # the map is drawn by the network that made the call: the home model's own explainer for a home call
    explainer, drawn = explainer_for(p), []
    assert explainer.home is not None and explainer.home.home is None
    explainer.overlay = lambda *a, **k: drawn.append("lab")
    explainer.home.overlay = lambda *a, **k: drawn.append("home")
    for image in (own, tmp_path / "new.png"):
        classify(p, explainer, str(image))
    assert drawn == ["home", "lab"]


@pytest.mark.slow
def test_the_fine_tune_keeps_half_the_source_without_a_domain_check_or_with_few_cells(tiny_model, tmp_path):
    """Without a check nothing could tell home images from the new lab's, so the measured guard for home
    (mix 0.5) stays; with few cells the fine-tune alone overfits the new lab."""
    from marrowscope.core.domain import DOMAIN_FILE
    from marrowscope.fit.adapt import MIX, MIX_ROUTED, STRONG_FROM

    bare = shutil.copytree(tiny_model, tmp_path / "bare")
    (bare / DOMAIN_FILE).unlink()
    cells = make_dataset(tmp_path / "lab", per_class=3, classes=("EOS", "LYT"))
    r = adapt(cells, bare, tmp_path / "ours", epochs=1, workers=0, holdout=0)
    assert (r["mix"], r["home"]) == (MIX, None) and not (tmp_path / "ours" / "home").exists()
    assert "kept in" not in (tmp_path / "ours" / "MODEL_CARD.md").read_text()
    assert read_model_info(tmp_path / "ours").home is None
    r = adapt(cells, tiny_model, tmp_path / "few", epochs=1, workers=0, holdout=0)
    assert (r["mix"], r["home"]) == (MIX, "home")  # home kept, but 3 cells a class: the fine-tune would overfit
    many = make_dataset(tmp_path / "many", per_class=STRONG_FROM, classes=("EOS", "LYT"))
    r = adapt(many, tiny_model, tmp_path / "routed", epochs=1, workers=0, holdout=0)
    assert (r["mix"], r["home"]) == (MIX_ROUTED, "home") and MIX_ROUTED > MIX
    assert "kept in `home/`" in (tmp_path / "routed" / "MODEL_CARD.md").read_text()


@pytest.mark.slow
def test_a_source_with_an_onnx_file_gives_an_adapted_folder_with_one(tiny_model, tmp_path):
    """The new lab's images then take the same fast path as the home images."""
    from marrowscope.core.predict import Predictor
    from marrowscope.fit.export import export_onnx

    source = shutil.copytree(tiny_model, tmp_path / "source")
    export_onnx(source)
    adapt(make_dataset(tmp_path / "lab", per_class=3, classes=("EOS", "LYT")), source, tmp_path / "ours", epochs=1,
          workers=0, holdout=0)
    p = Predictor(tmp_path / "ours")
    assert (p.backend, p.home.backend) == ("onnx", "onnx")


@pytest.mark.slow
def test_ddp_ranks_route_an_adapted_folders_images_as_one_process_does(tiny_run, routed, tmp_path):
    """The ranks decode each image as the home model reads it and hand it to the same routing step."""
    import csv
    import subprocess
    import sys

    from marrowscope.core.manifest import read_manifest
    from tests.conftest import strange_image

    folder = tmp_path / "cells"
    folder.mkdir()
    for k, s in enumerate(s for s in read_manifest(tiny_run / "manifest.csv") if s.split == "test"):
        shutil.copy(s.path, folder / f"own{k:02d}{s.path.suffix}")
    for k in range(3):
        strange_image(50 + k).save(folder / f"new{k}.png")
    rows = {}
    for devices in ("1", "2"):
        out = tmp_path / f"p{devices}.csv"
        res = subprocess.run([sys.executable, "-m", "marrowscope", "predict", str(folder), "--model", str(routed),
                              "--out", str(out), "--devices", devices, "--accelerator", "cpu", "--batch-size", "4",
                              "--quiet"], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        rows[devices] = [(r["file"], r["network"], r["predicted"], r["decision"]) for r in csv.DictReader(open(out))]
    assert rows["2"] == rows["1"] and {r[1] for r in rows["2"]} == {"home", "lab"}

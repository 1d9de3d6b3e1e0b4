"""Long runs survive interruption: results kept in OUT.partial as they are made, and --resume finishes
a run to the CSV an uninterrupted one writes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from marrowscope.apps.cli import main
from marrowscope.core.artifacts import write_settings
from marrowscope.core.data import load_samples
from marrowscope.core.partial import PartialFile, identity, partial_path
from marrowscope.core.predict import Predictor
from tests.conftest import make_cell_folder, synthetic_cell


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_cell_folder(tmp_path_factory.mktemp("many") / "cells", 40, seed=2000)


@pytest.fixture(scope="module")
def reference(tiny_model, folder, tmp_path_factory):
    """The uninterrupted run's CSV and counts."""
    out = tmp_path_factory.mktemp("ref") / "p.csv"
    assert main(["predict", str(folder), "--model", str(tiny_model), "--out", str(out), "--quiet"]) == 0
    return out.read_bytes(), out.with_name("p_counts.csv").read_bytes()


def _keep_first(model, folder, out, n, rank=None):
    """A partial file holding the first ``n`` images' results, as an interrupted run leaves it."""
    p = Predictor(model)
    files = sorted(folder.iterdir())[:n]
    keep = PartialFile(out, identity(p, "predict"), resume=rank is not None)  # ranks: others may be there
    keep = keep.for_rank(rank) if rank is not None else keep
    for r in p.predict_many(files):
        keep.add(r)
    keep.close()
    return keep.path


def test_resume_finishes_to_the_uninterrupted_csv_and_drops_a_torn_line(tiny_model, folder, reference, tmp_path,
                                                                       capsys):
    out = tmp_path / "p.csv"
    path = _keep_first(tiny_model, folder, out, 10)
    with open(path, "a") as fh:  # a kill in the middle of writing a line
        fh.write('{"file": "' + str(sorted(folder.iterdir())[10]) + '", "probs": [0.1')
    assert main(["predict", str(folder), "--model", str(tiny_model), "--out", str(out), "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err  # a plain run does not overwrite kept work
    assert main(["predict", str(folder), "--model", str(tiny_model), "--out", str(out), "--quiet", "--resume"]) == 0
    assert (out.read_bytes(), out.with_name("p_counts.csv").read_bytes()) == reference
    assert not partial_path(out).exists()


def test_resume_reads_every_rank_s_partial_file(tiny_model, folder, reference, tmp_path):
    out = tmp_path / "p.csv"
    _keep_first(tiny_model, folder, out, 7, rank=0)
    _keep_first(tiny_model, folder, out, 12, rank=1)
    assert main(["predict", str(folder), "--model", str(tiny_model), "--out", str(out), "--quiet", "--resume"]) == 0
    assert (out.read_bytes(), out.with_name("p_counts.csv").read_bytes()) == reference
    assert not list(tmp_path.glob("p.csv.partial*"))


def test_a_partial_file_of_another_model_or_settings_is_refused(tiny_model, folder, tmp_path, capsys):
    import shutil

    model = shutil.copytree(tiny_model, tmp_path / "m")
    out = tmp_path / "p.csv"
    _keep_first(model, folder, out, 5)
    assert main(["predict", str(folder), "--model", str(model), "--out", str(out), "--quiet", "--resume",
                 "--tta"]) == 2
    err = capsys.readouterr().err
    assert "written by another run (settings differ" in err and err.count("\n") == 1
    write_settings(model, temperature_note="changed")  # the model folder is no longer the one that wrote it
    assert main(["predict", str(folder), "--model", str(model), "--out", str(out), "--quiet", "--resume"]) == 2
    assert "model_sha256 differ" in capsys.readouterr().err
    assert partial_path(out).exists()  # refused, and nothing lost


def test_evaluate_resumes_to_the_same_report(tiny_run, tmp_path):
    manifest = tiny_run / "manifest.csv"
    args = ["evaluate", str(manifest), "--model", str(tiny_run / "model"), "--split", "test"]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    p = Predictor(tiny_run / "model")
    out = tmp_path / "ev"
    keep = PartialFile(out / "predictions.csv", identity(p, "evaluate"), resume=False)
    test = [s.path for s in load_samples(manifest)[0] if s.split == "test"][:5]
    for r in p.predict_many(test):
        keep.add(r)
    keep.close()
    assert main([*args, "--out", str(out), "--resume"]) == 0
    assert (out / "predictions.csv").read_bytes() == (tmp_path / "ref" / "predictions.csv").read_bytes()
    # the figures agree to float noise: a network's arithmetic depends a little on the batch an image is
    # read in, and the kept images were read in another batch (as with another --batch-size)
    got, ref = (json.loads((d / "metrics.json").read_text()) for d in (out, tmp_path / "ref"))
    tests = sum(s.split == "test" for s in load_samples(manifest)[0])
    assert got.keys() == ref.keys() and got["images"] == ref["images"] == tests
    for key in ("accuracy", "macro_f1", "log_loss", "ece"):
        assert got[key] == pytest.approx(ref[key], abs=1e-6), key
    assert got["per_class"] == ref["per_class"] and got["decisions"] == ref["decisions"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_real_predict_killed_part_way_resumes_to_the_uninterrupted_csv(tiny_model, tmp_path, sig):
    folder = tmp_path / "cells"
    folder.mkdir()
    for k in range(1500):
        synthetic_cell(k % 7, 5000 + k).save(folder / f"c{k:04d}.png")
    out = tmp_path / "p.csv"
    cmd = [sys.executable, "-m", "marrowscope", "predict", str(folder), "--model", str(tiny_model), "--quiet",
           "--backend", "torch", "--batch-size", "1"]
    assert subprocess.run([*cmd, "--out", str(tmp_path / "ref.csv")], capture_output=True).returncode == 0
    # SIGINT as a terminal's Ctrl-C sends it: a job started in the background may inherit it ignored
    proc = subprocess.Popen([*cmd, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    partial, deadline = partial_path(out), time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and partial.read_text().count("\n") > 100:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "predict ended before it could be interrupted"
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert not out.exists()  # no CSV posing as a whole one
    kept = partial.read_text().count("\n") - 1
    assert 100 <= kept < 1500
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and f"{kept} finished result(s) kept in {partial}" in err and "--resume" in err
    resumed = subprocess.run([*cmd, "--out", str(out), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ref = (tmp_path / "ref.csv").read_text().replace("ref.csv", "p.csv")
    assert out.read_text() == ref and not partial.exists()


def test_a_kept_result_reads_back_whole_which_network_read_it_included():
    """A resumed run of an adapted folder writes the same network column as one never interrupted."""
    import numpy as np

    from marrowscope.core.partial import record, result_of
    from marrowscope.core.predict import Prediction
    from marrowscope.core.scale import Scale

    p = Prediction("a.png", np.array([0.7, 0.3], np.float32), "BLA", 0.7, "review", ("BLA",), False, 0.9,
                   Scale(0.1, "given"), 0.0, "home")
    back = result_of(json.loads(json.dumps(record(p))))
    assert (back.network, back.call, back.set, back.scale) == ("home", "BLA", ("BLA",), p.scale)
    assert np.array_equal(back.probs, p.probs)

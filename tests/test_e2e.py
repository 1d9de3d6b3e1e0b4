"""prepare -> train -> evaluate -> predict through the CLI on a small sample of the real images."""

import csv
import json

import pytest

from marrowscope.apps.cli import main
from marrowscope.core.classes import CLASSES


@pytest.mark.slow
def test_cli_pipeline_on_real_images(real_data, tmp_path, capsys):
    manifest = tmp_path / "manifest.csv"
    assert main(["prepare", str(real_data), "--out", str(manifest), "--per-class", "8", "--seed", "1"]) == 0
    assert "BLA" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["train", str(manifest), "--out", str(run), "--arch", "test_efficientnet", "--img-size", "32",
                 "--epochs", "2", "--batch-size", "8", "--workers", "0", "--accelerator", "cpu"]) == 0
    assert main(["evaluate", str(run), str(manifest), "--split", "test", "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["images"] == 7  # 1 of 8 per class (round(8 * 0.15))
    assert metrics["overlap_with_training"] == 0
    assert set(metrics["per_class"]) == set(CLASSES)
    out = tmp_path / "pred.csv"
    assert main(["predict", str(real_data / "BLA"), "--model", str(run), "--out", str(out), "--quiet"]) == 0
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 500 and all(r["status"] == "ok" for r in rows)
    assert "differential count of 500" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("marrowscope prepare: error:") and "does not exist" in err and "\n" not in err
    assert main(["predict", str(tmp_path), "--model", str(tmp_path / "nomodel")]) == 2
    assert "model folder" in capsys.readouterr().err


def test_stats_writes_charts(tmp_path, capsys):
    from tests.conftest import make_dataset

    data = make_dataset(tmp_path / "d", per_class=5)
    assert main(["stats", str(data), "--out", str(tmp_path / "st")]) == 0
    assert (tmp_path / "st" / "class_bar.png").stat().st_size > 1000
    assert (tmp_path / "st" / "class_pie.png").stat().st_size > 1000
    counts = json.loads((tmp_path / "st" / "counts.json").read_text())
    assert counts["BLA"]["total"] == 5
    assert "BLA" in capsys.readouterr().out


def test_one_model_convention_and_old_spellings_still_read(capsys):
    """--model is always a model folder and --arch the architecture; the old spellings work for one
    release and say what to use instead."""
    from marrowscope.apps.cli import build_parser

    parser = build_parser()
    a = parser.parse_args(["train", "--out", "run", "--arch", "resnet18"])
    assert a.model == "resnet18" and capsys.readouterr().err == ""
    assert parser.parse_args(["train", "--out", "run"]).model == "rexnet_150"  # the mission's default
    a = parser.parse_args(["cv", "--out", "cv", "--model", "resnet18"])
    assert a.model == "resnet18" and "--model is deprecated" in capsys.readouterr().err
    a = parser.parse_args(["adapt", "cells", "--out", "new", "--from", "models/x"])
    assert a.source == "models/x" and "use --model" in capsys.readouterr().err
    assert parser.parse_args(["adapt", "cells", "--out", "new", "--model", "models/x"]).source == "models/x"


def test_help_of_every_command_loads_no_heavy_library():
    """Flag choices and defaults come from light modules: --help never imports torch, timm or Gradio."""
    import subprocess
    import sys

    code = ("import contextlib, io, sys\n"
            "from marrowscope.apps.cli import build_parser\n"
            "p = build_parser()\n"
            "names = ['--help', *(f'{c} --help' for c in p._subparsers._group_actions[0].choices)]\n"
            "for n in names:\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        build_parser().parse_args(n.split())\n"
            "print(len(names), sorted(m for m in ('torch', 'timm', 'gradio', 'lightning') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    count, heavy = out.stdout.split(" ", 1)
    assert int(count) >= 15 and heavy.strip() == "[]", out.stdout

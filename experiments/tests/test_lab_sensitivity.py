"""experiments/lab_sensitivity.py: one row per change, a bad file said and left out."""

import runpy
from pathlib import Path

from tests.conftest import make_dataset

SCRIPT = Path(__file__).parents[1] / "lab_sensitivity.py"


def test_one_row_per_change_and_bad_files_are_said(tiny_model, tmp_path, capsys):
    data = make_dataset(tmp_path / "lab", per_class=3, classes=("EOS", "LYT"))
    (data / "LYT" / "LYT_broken.png").write_bytes(b"not an image")
    main = runpy.run_path(str(SCRIPT))["main"]
    main(["--model", str(tiny_model), "--data", str(data), "--per-class", "4", "--changes", "none", "blur 1.0"])
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| change")]
    assert [r.split(" | ")[0] for r in rows] == ["| none", "| blur 1.0"]
    assert "(6 images)" in out  # 3 + 3 readable; the broken file is the 4th of LYT
    assert "skipped" in err and "LYT_broken.png" in err
    for column in (1, 2):  # the blur shows in both sharpness columns
        sharp = {r.split(" | ")[0]: float(r.split(" | ")[column]) for r in rows}
        assert sharp["| blur 1.0"] < sharp["| none"]
    for r in rows:
        accuracy = float(r.split(" | ")[3])
        assert 0.0 <= accuracy <= 1.0

"""Figures: written files, and no pyplot (global state) anywhere the app's worker threads draw."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from marrowscope.core.classes import CLASSES
from marrowscope.report import plots


def test_no_pyplot_is_imported_by_the_app_and_its_figures():
    code = ("import sys; import marrowscope.report.plots as p, marrowscope.report.evaluate, marrowscope.apps.views; "
            "p.count_figure([{'class': 'BLA', 'cells': 1, 'percent': 100.0}]); "
            "p.distribution_figure({'BLA': 3, 'EOS': 1}); p.confusion_figure([[1, 0], [0, 1]], ['A', 'B']); "
            "print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_figures_drawn_from_many_threads_at_once(tmp_path):
    def draw(k):
        counts = [{"class": c, "cells": k + i, "percent": 100 / 7} for i, c in enumerate(CLASSES)]
        path = tmp_path / f"c{k}.png"
        plots.count_figure(counts).savefig(path)
        return path, plots.plot_distribution({c: k + i for i, c in enumerate(CLASSES)}, tmp_path / f"d{k}")[0]

    with ThreadPoolExecutor(8) as pool:
        paths = [p for pair in pool.map(draw, range(8)) for p in pair]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in paths)


def test_distribution_charts(tmp_path):
    paths = plots.plot_distribution({"BLA": 5, "EOS": 3}, tmp_path)
    assert [p.name for p in paths] == ["class_bar.png", "class_pie.png"] and all(p.stat().st_size > 1000 for p in paths)

"""Start-up figures a lab feels when it calls marrowscope from scripts: wall time of `marrowscope --help`,
`marrowscope predict --help` and `marrowscope predict ONE_IMAGE --out x.csv` (the default ONNX path), and
of the app until it answers HTTP 200, until its first classification's call, and until that
classification's Grad-CAM map; each the median of --runs runs. Run it on an idle machine.

    python bench/startup.py [--image ../shared/data/bone-marrow-7/BLA/...jpg] [--runs 5] [--no-app]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CLI = [sys.executable, "-m", "marrowscope"]


def wall(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def app_ready(runs: int, image: str) -> tuple[float, float, float]:
    """Seconds from launch to HTTP 200, to the first classification's call, to its map."""
    from gradio_client import Client, handle_file

    times = []
    for _ in range(runs):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        t = time.perf_counter()
        proc = subprocess.Popen([*CLI, "app", "--port", str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            while time.perf_counter() - t < 120:
                try:
                    if urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).status == 200:
                        break
                except OSError:
                    time.sleep(0.1)
            up = time.perf_counter() - t
            job = Client(f"http://127.0.0.1:{port}/", verbose=False).submit(handle_file(image), 0,
                                                                            api_name="/classify")
            first = None
            for _ in job:  # the call, then (while Grad-CAM still loads) the map
                first = first or time.perf_counter() - t
            job.result()
            times.append((up, first or time.perf_counter() - t, time.perf_counter() - t))
        finally:
            proc.terminate()
            proc.wait()
    return tuple(statistics.median(x[k] for x in times) for k in range(3))


def main() -> None:
    from marrowscope.core.data import default_data_dir

    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-app", action="store_true")
    a = ap.parse_args()
    image = a.image or str(sorted((default_data_dir() / "BLA").glob("*.jpg"))[0])
    rows = {"marrowscope --help": wall([*CLI, "--help"], a.runs),
            "marrowscope predict --help": wall([*CLI, "predict", "--help"], a.runs)}
    with tempfile.TemporaryDirectory() as d:
        rows["marrowscope predict ONE_IMAGE (ONNX)"] = wall([*CLI, "predict", image, "--out", str(Path(d) / "x.csv"),
                                                             "--quiet"], a.runs)
    if not a.no_app:
        (rows["marrowscope app, until HTTP 200"], rows["app, first classification's call"],
         rows["app, first classification's map"]) = app_ready(a.runs, image)
    for name, secs in rows.items():
        print(f"{name:<40} {secs:6.2f} s (median of {a.runs})")


if __name__ == "__main__":
    main()

"""Load test of the app: N concurrent gradio_client clients, M predictions each, against an app
launched here on 127.0.0.1 with the bundled model (or --model). Prints and writes JSON.

    python bench/load_test.py [--clients 16] [--requests 25] [--out docs/results/load_results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def main() -> int:
    from gradio_client import Client, handle_file
    from PIL import Image

    from marrowscope.apps.app import MAX_UPLOAD, build_demo
    from marrowscope.core.data import default_data_dir
    from marrowscope.core.predict import Predictor
    from marrowscope.report.explain import Explainer

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=25)
    ap.add_argument("--out", default="docs/results/load_results.json")
    a = ap.parse_args()

    predictor = Predictor(a.model)
    demo = build_demo(predictor, explainer=Explainer(predictor.model_dir))
    demo.queue(default_concurrency_limit=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, max_file_size=MAX_UPLOAD)
    url = f"http://127.0.0.1:{port}/"
    data = default_data_dir()
    images = sorted(data.rglob("*.jpg"))[::50] if data else []
    tmp = Path(tempfile.mkdtemp())
    if not images:  # no dataset: synthetic images
        for k in range(20):
            Image.effect_noise((250, 250), 60).convert("RGB").save(tmp / f"n{k}.png")
        images = sorted(tmp.glob("*.png"))

    def client_run(cid: int):
        client = Client(url, verbose=False)
        lat, fails = [], []
        for k in range(a.requests):
            img = images[(cid * a.requests + k) % len(images)]
            t = time.perf_counter()
            try:
                top, _, _ = client.predict(handle_file(str(img)), 0, api_name="/classify")
                assert len(top["confidences"]) == 3
            except Exception as exc:  # counted, reported
                fails.append(repr(exc)[:200])
            lat.append((time.perf_counter() - t) * 1000)
        return lat, fails

    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.clients) as pool:
        results = list(pool.map(client_run, range(a.clients)))
    wall = time.perf_counter() - t0
    lat = [x for r in results for x in r[0]]
    fails = [x for r in results for x in r[1]]

    big = tmp / "big.bmp"  # about 27 MB, above the 15 MB upload limit
    Image.new("RGB", (3000, 3000)).save(big)
    try:
        Client(url, verbose=False).predict(handle_file(str(big)), 0, api_name="/classify")
        oversize = "accepted (WRONG)"
    except Exception as exc:
        oversize = f"refused: {str(exc).replace(str(big), big.name)[:160]}"  # no machine path in the results
    demo.close()
    out = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "clients": a.clients,
           "requests_per_client": a.requests, "requests": len(lat), "failures": len(fails),
           "median_ms": round(statistics.median(lat), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
           "wall_s": round(wall, 1), "requests_per_s": round(len(lat) / wall, 2), "oversize_upload": oversize,
           "first_failures": fails[:3], "tta": predictor.tta, "backend": predictor.backend}
    print(json.dumps(out, indent=2))
    Path(a.out).write_text(json.dumps(out, indent=2))
    return 0 if not fails and oversize.startswith("refused") else 1


if __name__ == "__main__":
    sys.exit(main())

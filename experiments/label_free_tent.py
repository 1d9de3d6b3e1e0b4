"""Entropy minimisation after the label-free fit (TENT, Wang et al. 2021), with and without a guard
against collapse: does it lift another lab without labels, and can it collapse?

other-lab-pbc, the README's adaptation split: `adapt --unlabelled` fitted on the first 20 images of each
class by sorted file name (100 images, pooled, no label used), then the batch-norm layers' scale and
shift trained to make the network's calls on those 100 images confident; accuracy on the other 400.
Two objectives:
- ``entropy``: the mean entropy of each image's prediction (TENT). Nothing stops it from making every
  image confidently the same class: the collapse case;
- ``infomax``: that, minus the entropy of the mean prediction (SHOT, Liang et al. 2020), which is
  largest when the calls spread over the classes, plus a stop: the run is discarded when the most
  common call's share on the fitted images grows by more than 0.15 over the label-free fit's.
The network stays in eval mode (the label-free fit's statistics), as it will be used: one image at a time.

    python experiments/label_free_tent.py [--model models/default] [--out docs/results/label_free_tent.json]
"""

import argparse
import importlib.util
import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from marrowscope.core.artifacts import load_model_folder, read_model_info, resolve_model_dir, save_model_folder
from marrowscope.core.data import default_data_dir
from marrowscope.core.images import decode_image
from marrowscope.core.predict import Predictor
from marrowscope.core.preprocess import Preprocess
from marrowscope.fit.label_free import adapt_unlabelled
from marrowscope.report.evaluate import evaluate

GUARD = 0.15  # the most common call's share may grow by this much, no more


def _bench_label_free():
    """bench/label_free.py, whose adaptation split this study shares (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_label_free",
                                                  Path(__file__).parents[1] / "bench" / "label_free.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p + 1e-8)).sum(-1)


def top_share(net: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        calls = net(x).argmax(1).tolist()
    return Counter(calls).most_common(1)[0][1] / len(calls)


def tent(folder: Path, out: Path, files: list, objective: str, steps: int, lr: float) -> dict:
    """``folder``'s network with its batch-norm scale and shift trained ``steps`` steps on ``files`` -> ``out``."""
    net, info = load_model_folder(folder)
    prep = Preprocess.for_model(read_model_info(folder))
    x = torch.from_numpy(np.stack([prep(decode_image(f))[0] for f in files]))
    net.eval()
    params = [p for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
              for p in (m.weight, m.bias) if p is not None]
    for p in net.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    share0 = top_share(net, x)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randperm(len(x), generator=g)[:50]
        batch = x[idx]
        batch = torch.where(torch.rand(len(batch), 1, 1, 1, generator=g) < 0.5, batch.flip(-1), batch)
        p = net(batch).softmax(1)
        loss = entropy(p).mean()
        if objective == "infomax":
            loss = loss - entropy(p.mean(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    share = top_share(net, x)
    kept = not (objective == "infomax" and share > share0 + GUARD)
    if not kept:  # the guard: back to the label-free fit's network
        net, info = load_model_folder(folder)
    save_model_folder(net.eval(), out, info.classes, info.data_config, extra=info.extra, half=True,
                      files={n: folder / n for n in ("domain.safetensors",) if (folder / n).is_file()})
    return {"top_call_share_on_fit_images": [round(share0, 3), round(share, 3)], "kept": kept}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="docs/results/label_free_tent.json")
    a = ap.parse_args()
    source = resolve_model_dir(a.model)
    other = default_data_dir().parent / "other-lab-pbc"
    runs = [("entropy", 10, 1e-3), ("entropy", 30, 1e-3), ("infomax", 10, 1e-3), ("infomax", 30, 1e-3),
            ("entropy", 100, 1e-2), ("infomax", 100, 1e-2)]
    res = {"model": source.name, "fit": "first 20 per class of other-lab-pbc, 100 images, unlabelled",
           "measured_on": "the other 400 images of other-lab-pbc", "runs": []}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        fit, rest = _bench_label_free().adaptation_split(other, work)
        adapt_unlabelled(fit, source, work / "adabn")
        fitted = sorted(fit.iterdir())

        def measure(folder: Path) -> dict:
            r = evaluate(Predictor(folder, backend="torch"), rest, "all")
            return {"accuracy": r["accuracy"], "recall": {c: v["recall"] for c, v in r["per_class"].items()
                                                          if v["support"]}}

        res["label_free_fit_alone"] = measure(work / "adabn")
        print("adabn", json.dumps(res["label_free_fit_alone"]), flush=True)
        for objective, steps, lr in runs:
            out = work / f"{objective}{steps}_{lr}"
            t = time.perf_counter()
            r = tent(work / "adabn", out, fitted, objective, steps, lr)
            r = {"objective": objective, "steps": steps, "lr": lr, "seconds": round(time.perf_counter() - t, 1),
                 **r, **measure(out)}
            res["runs"].append(r)
            print(json.dumps(r), flush=True)
            shutil.rmtree(out)
    Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

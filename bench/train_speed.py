"""Bare training speed: forward + backward + AdamW step on random tensors, images/s.

    python bench/train_speed.py [--models rexnet_150 tf_efficientnet_lite0] [--batch 128] [--steps 30]

On a GPU: bf16 autocast and channels_last, as `marrowscope train` uses there; on a CPU: float32.
Compare with the `images_per_s` column of a run's history.csv (the whole pipeline) to see
whether data loading keeps up.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import timm
import torch


def bench(name: str, batch: int, steps: int, size: int, device: str) -> float:
    net = timm.create_model(name, num_classes=7).to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (batch,), device=device)

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["rexnet_150", "tf_efficientnet_lite0"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--size", type=int, default=224)
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    info = {"device": torch.cuda.get_device_name() if device == "cuda" else f"cpu x{os.cpu_count()}",
            "torch": torch.__version__, "batch": a.batch, "size": a.size}
    for name in a.models:
        info[name] = round(bench(name, a.batch, a.steps, a.size, device), 1)
        print(json.dumps({"model": name, "images_per_s": info[name], **{k: info[k] for k in ("device", "batch")}}),
              flush=True)
    print(json.dumps(info))


if __name__ == "__main__":
    main()

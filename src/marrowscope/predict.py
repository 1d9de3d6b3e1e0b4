"""Predictor: images -> probabilities -> top-k; batch streaming over folders; differential counts.

The model folder is loaded once. Backends: ONNX Runtime when the folder holds ``model.onnx``
(fastest on CPU), else PyTorch with ``channels_last`` and ``inference_mode``.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from marrowscope.artifacts import load_model_folder, read_model_info, resolve_model_path
from marrowscope.errors import ImageDecodeError, MarrowscopeError
from marrowscope.images import ImageSource, decode_image, is_image_path
from marrowscope.transforms import eval_transform

BACKENDS = ("auto", "onnx", "onnx-int8", "torch")
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}


@dataclass
class Prediction:
    """One image's result: probabilities over the classes, or the reason it could not be read."""

    source: str
    probs: Optional[np.ndarray] = None
    error: Optional[str] = None

    def top_k(self, classes: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
        return top_k(self.probs, classes, k) if self.probs is not None else []


def tta_views(batch: torch.Tensor, tta: bool) -> torch.Tensor:
    """The batch, or [batch; mirror; 90-degree turn; mirrored turn] stacked along the batch axis:
    a cell has no orientation, so all four views should get the same answer."""
    if not tta:
        return batch
    return torch.cat([batch, batch.flip(3), batch.rot90(1, (2, 3)), batch.flip(3).rot90(1, (2, 3))])


def split_views(logits: np.ndarray, n: int) -> np.ndarray:
    """[V * N, C] logits of ``tta_views`` -> [V, N, C]."""
    return logits.reshape(-1, n, logits.shape[-1])


def load_input(src: ImageSource, transform) -> tuple[Optional[torch.Tensor], Optional[str]]:
    """Decode and transform one source: (tensor, None), or (None, the reason it cannot be read)."""
    try:
        return transform(decode_image(src)), None
    except ImageDecodeError as exc:
        return None, str(exc)


def probs_from_logits(view_logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """[V, N, C] logits -> [N, C]: softmax of logits / temperature, averaged over the V views."""
    z = view_logits / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).mean(axis=0)


def top_k(probs: np.ndarray, classes: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
    """The k most probable classes, most probable first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [(classes[i], float(probs[i])) for i in order]


def resolve_model_dir(path: Optional[str | Path]) -> Path:
    """A model folder, a run folder (holding ``model/``), or the bundled default."""
    path = resolve_model_path(path)
    return path / "model" if (path / "model" / "config.json").is_file() else path


class Predictor:
    """Classify cell images with a model folder.

    Example::

        p = Predictor("models/default")
        p.predict("cell.jpg")          # {"BLA": 0.91, "PMO": 0.05, ...}, descending

    ``tta`` averages over flips and 90-degree turns (4x the compute); by default the model
    folder's own ``marrowscope.tta`` setting decides.
    """

    def __init__(self, model_dir: Optional[str | Path] = None, backend: str = "auto", threads: Optional[int] = None,
                 tta: Optional[bool] = None):
        if backend not in BACKENDS:
            raise MarrowscopeError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}.")
        self.model_dir = resolve_model_dir(model_dir)
        self.info = read_model_info(self.model_dir)
        self.classes = self.info.classes
        self.transform = eval_transform(self.info.data_config)
        # None: as the model folder says (its card reports metrics with that setting)
        self.tta = bool(self.info.extra.get("tta", False)) if tta is None else tta
        # fitted on validation images by `marrowscope calibrate`; 1.0 = the network's own softmax
        self.temperature = float(self.info.extra.get("temperature", 1.0))
        if backend == "auto":  # the fastest that is there: INT8 (shipped only if accuracy held), fp32, PyTorch
            backend = next((b for b in ("onnx-int8", "onnx") if (self.model_dir / ONNX_FILES[b]).is_file()), "torch")
            backend = backend if backend == "torch" or _has_ort() else "torch"
        if backend in ONNX_FILES and not (self.model_dir / ONNX_FILES[backend]).is_file():
            raise MarrowscopeError(f"--backend {backend}: '{self.model_dir / ONNX_FILES[backend]}' is missing; run "
                                   f"`marrowscope export-onnx{' --int8' if backend == 'onnx-int8' else ''} "
                                   f"{self.model_dir}` first.")
        self.backend = backend
        if threads:
            torch.set_num_threads(threads)
        if self.backend in ONNX_FILES:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(self.model_dir / ONNX_FILES[self.backend]), opts,
                                                providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
            self.net = None
        else:
            self.net, _ = load_model_folder(self.model_dir)
            self.net = self.net.to(memory_format=torch.channels_last)

    def preprocess(self, src: ImageSource) -> torch.Tensor:
        """Decode (the one decoder) and transform to a [3, H, W] tensor."""
        return self.transform(decode_image(src))

    def probs_of_batch(self, batch: torch.Tensor) -> np.ndarray:
        """[N, 3, H, W] tensor -> [N, C] probabilities (averaged over 4 views with ``tta``)."""
        return probs_from_logits(self.view_logits(batch), self.temperature)

    def view_logits(self, batch: torch.Tensor) -> np.ndarray:
        """[V, N, C] logits: V = 1, or 4 views with ``tta``."""
        return split_views(self._logits(tta_views(batch, self.tta)), len(batch))

    def _logits(self, batch: torch.Tensor) -> np.ndarray:
        if self.backend in ONNX_FILES:
            return self.session.run(None, {self.input_name: batch.numpy()})[0]
        with torch.inference_mode():
            return self.net(batch.contiguous(memory_format=torch.channels_last)).float().numpy()

    def predict(self, src: ImageSource) -> dict[str, float]:
        """One image -> {class: probability} over all classes, most probable first.

        Raises:
            ImageDecodeError: the image cannot be read.
        """
        probs = self.probs_of_batch(self.preprocess(src).unsqueeze(0))[0]
        return dict(top_k(probs, self.classes, len(self.classes)))

    def predict_many(self, sources: Sequence[ImageSource], batch_size: int = 32, workers: Optional[int] = None,
                     names: Optional[Sequence[str]] = None) -> Iterator[Prediction]:
        """Stream predictions in input order; decoding runs in threads while the model works.

        Unreadable sources yield a ``Prediction`` with ``error`` set; the rest are classified.
        """
        workers = workers or min(4, os.cpu_count() or 1)
        names = list(names) if names is not None else [str(s) if isinstance(s, (str, Path)) else f"image {i}"
                                                        for i, s in enumerate(sources)]

        with ThreadPoolExecutor(workers) as pool:
            pending: deque = deque()
            it = iter(zip(names, sources))
            for name, src in _take(it, batch_size * 2):
                pending.append((name, pool.submit(load_input, src, self.transform)))
            while pending:
                chunk = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
                for name, src in _take(it, len(chunk)):  # keep the decoders one batch ahead
                    pending.append((name, pool.submit(load_input, src, self.transform)))
                loaded = [(name, *fut.result()) for name, fut in chunk]
                ok = [x for _, x, err in loaded if err is None]
                probs = iter(self.probs_of_batch(torch.stack(ok))) if ok else iter(())
                for name, x, err in loaded:
                    yield Prediction(name, next(probs), None) if err is None else Prediction(name, None, err)


def _take(it: Iterator, n: int) -> list:
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out


def _has_ort() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def collect_images(paths: Iterable[str | Path]) -> tuple[list[Path], list[Prediction]]:
    """Files as given, folders searched recursively for images; missing paths reported."""
    found, missing = [], []
    for p in map(Path, paths):
        if p.is_dir():
            images = sorted(f for f in p.rglob("*") if f.is_file() and is_image_path(f))
            if not images:
                missing.append(Prediction(str(p), None, f"folder '{p}' holds no images."))
            found += images
        elif p.exists():
            found.append(p)
        else:
            missing.append(Prediction(str(p), None, f"'{p}' does not exist."))
    return found, missing


def differential_count(labels: Iterable[str], classes: Sequence[str]) -> list[dict]:
    """Cells per class and percent of classified cells, in class order, zeros included."""
    counts = Counter(labels)
    total = sum(counts[c] for c in classes)
    return [{"class": c, "cells": counts[c], "percent": round(100 * counts[c] / total, 1) if total else 0.0}
            for c in classes]

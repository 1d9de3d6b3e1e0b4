"""Predictor: the one inference path from files to probabilities, shared by predict, evaluate,
calibrate, the app and the DDP ranks.

file/upload -> :meth:`Predictor.load` (the one decoder, the model folder's eval transform)
-> :meth:`Predictor.view_logits` (the backend; 4 views with TTA) -> :func:`probs_from_logits`
(temperature, softmax, view average). Unreadable inputs become :class:`Unreadable` and the rest go on.

The model folder is loaded once. Backends: ONNX Runtime when the folder holds ``model.onnx``
(fastest on CPU), else PyTorch with ``channels_last`` and ``inference_mode``.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from marrowscope.artifacts import load_model_folder, read_model_info, resolve_model_dir
from marrowscope.errors import ImageDecodeError, MarrowscopeError, Unreadable
from marrowscope.images import ImageSource, decode_image, is_image_path
from marrowscope.transforms import eval_transform

BACKENDS = ("auto", "onnx", "onnx-int8", "torch")
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}


@dataclass
class Prediction:
    """One image's probabilities over the model's classes."""

    source: str
    probs: np.ndarray

    def top_k(self, classes: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
        return top_k(self.probs, classes, k)


Result = Union[Prediction, Unreadable]


def tta_views(batch: torch.Tensor, tta: bool) -> torch.Tensor:
    """The batch, or [batch; mirror; 90-degree turn; mirrored turn] stacked along the batch axis:
    a cell has no orientation, so all four views should get the same answer."""
    if not tta:
        return batch
    return torch.cat([batch, batch.flip(3), batch.rot90(1, (2, 3)), batch.flip(3).rot90(1, (2, 3))])


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


class Predictor:
    """Classify cell images with a model folder.

    Example::

        p = Predictor("models/default")
        p.predict("cell.jpg")          # {"BLA": 0.91, "PMO": 0.05, ...}, descending

    ``tta`` averages over flips and 90-degree turns (4x the compute); by default the model
    folder's own setting decides, and the temperature fitted for that setting is applied.
    """

    def __init__(self, model_dir: Optional[str | Path] = None, backend: str = "auto", threads: Optional[int] = None,
                 tta: Optional[bool] = None):
        if backend not in BACKENDS:
            raise MarrowscopeError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}.")
        self.model_dir = resolve_model_dir(model_dir)
        self.info = read_model_info(self.model_dir)
        self.classes = self.info.classes
        self.transform = eval_transform(self.info.data_config)
        self.tta = self.info.tta if tta is None else tta
        # fitted on validation images by `marrowscope calibrate`; 1.0 = the network's own softmax
        self.temperature = self.info.temperature(self.tta)
        self.backend = self._choose_backend(backend)
        if threads:
            torch.set_num_threads(threads)
        self.net, self.session = None, None
        if self.backend in ONNX_FILES:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(self.model_dir / ONNX_FILES[self.backend]), opts,
                                                providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
        else:
            self.net = load_model_folder(self.model_dir)[0].to(memory_format=torch.channels_last)

    def _choose_backend(self, backend: str) -> str:
        if backend == "auto":  # the fastest that is there: INT8 (shipped only if accuracy held), fp32, PyTorch
            backend = next((b for b in ("onnx-int8", "onnx") if (self.model_dir / ONNX_FILES[b]).is_file()), "torch")
            return backend if backend == "torch" or _has_ort() else "torch"
        if backend in ONNX_FILES and not (self.model_dir / ONNX_FILES[backend]).is_file():
            raise MarrowscopeError(f"--backend {backend}: '{self.model_dir / ONNX_FILES[backend]}' is missing; run "
                                   f"`marrowscope export-onnx{' --int8' if backend == 'onnx-int8' else ''} "
                                   f"--model {self.model_dir}` first.")
        return backend

    def load(self, src: ImageSource, name: Optional[str] = None) -> Union[torch.Tensor, Unreadable]:
        """Decode (the one decoder) and transform one source to [3, H, W], or say why it cannot be read."""
        try:
            return self.transform(decode_image(src))
        except ImageDecodeError as exc:
            return Unreadable(name if name is not None else _name(src, 0), str(exc))

    def view_logits(self, batch: torch.Tensor) -> np.ndarray:
        """[N, 3, H, W] -> [V, N, C] logits: V = 1, or 4 views with ``tta``."""
        views = tta_views(batch, self.tta)
        if self.session is not None:
            logits = self.session.run(None, {self.input_name: views.cpu().numpy()})[0]
        else:
            device = next(self.net.parameters()).device
            with torch.inference_mode():
                logits = self.net(views.to(device).contiguous(memory_format=torch.channels_last)).float().cpu().numpy()
        return logits.reshape(-1, len(batch), logits.shape[-1])

    def probs_of_batch(self, batch: torch.Tensor) -> np.ndarray:
        """[N, 3, H, W] tensor -> [N, C] probabilities (temperature applied, views averaged)."""
        return probs_from_logits(self.view_logits(batch), self.temperature)

    def stream_logits(self, sources: Sequence[ImageSource], names: Optional[Sequence[str]] = None,
                      batch_size: int = 32, workers: Optional[int] = None
                      ) -> Iterator[Union[tuple[str, np.ndarray], Unreadable]]:
        """(name, [V, C] logits) or :class:`Unreadable` per source, in input order; decoding runs in
        threads one batch ahead of the model."""
        names = list(names) if names is not None else [_name(s, i) for i, s in enumerate(sources)]
        with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
            pending: deque = deque()
            it = iter(zip(names, sources))
            for name, src in _take(it, batch_size * 2):
                pending.append((name, pool.submit(self.load, src, name)))
            while pending:
                chunk = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
                for name, src in _take(it, len(chunk)):  # keep the decoders one batch ahead
                    pending.append((name, pool.submit(self.load, src, name)))
                loaded = [(name, fut.result()) for name, fut in chunk]
                ok = [x for _, x in loaded if not isinstance(x, Unreadable)]
                logits = iter(self.view_logits(torch.stack(ok)).transpose(1, 0, 2)) if ok else iter(())
                for name, x in loaded:
                    yield x if isinstance(x, Unreadable) else (name, next(logits))

    def predict_many(self, sources: Sequence[ImageSource], batch_size: int = 32, workers: Optional[int] = None,
                     names: Optional[Sequence[str]] = None) -> Iterator[Result]:
        """A :class:`Prediction` or an :class:`Unreadable` per source, in input order."""
        for item in self.stream_logits(sources, names, batch_size, workers):
            yield item if isinstance(item, Unreadable) else \
                Prediction(item[0], probs_from_logits(item[1][:, None], self.temperature)[0])

    def predict(self, src: ImageSource) -> dict[str, float]:
        """One image -> {class: probability} over all classes, most probable first.

        Raises:
            ImageDecodeError: the image cannot be read.
        """
        (result,) = self.predict_many([src], batch_size=1, workers=1)
        if isinstance(result, Unreadable):
            raise ImageDecodeError(result.reason)
        return dict(top_k(result.probs, self.classes, len(self.classes)))

    def run(self, files: Sequence[Path], *, batch_size: int = 32, launch: Optional[dict] = None,
            work: Optional[Path] = None) -> Optional[Iterable[Result]]:
        """Results for ``files`` here, or shared out over Lightning DDP ranks with ``launch``
        (``devices``, ``num_nodes``, ``accelerator``): then global rank 0 gets them all, in input
        order, and the other ranks get None. ``work`` holds the ranks' shares meanwhile."""
        if not launch:
            return self.predict_many(files, batch_size=batch_size)
        from marrowscope.distributed import predict_distributed

        return predict_distributed(self, files, work or Path("prediction_parts"), batch_size=batch_size, **launch)


def _name(src: object, i: int) -> str:
    return str(src) if isinstance(src, (str, Path)) else f"image {i}"


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


def collect_images(paths: Iterable[str | Path]) -> tuple[list[Path], list[Unreadable]]:
    """Files as given, folders searched recursively for images; missing paths reported."""
    found, missing = [], []
    for p in map(Path, paths):
        if p.is_dir():
            images = sorted(f for f in p.rglob("*") if f.is_file() and is_image_path(f))
            if not images:
                missing.append(Unreadable(p, f"folder '{p}' holds no images."))
            found += images
        elif p.exists():
            found.append(p)
        else:
            missing.append(Unreadable(p, f"'{p}' does not exist."))
    return found, missing


def differential_count(labels: Iterable[str], classes: Sequence[str]) -> list[dict]:
    """Cells per class and percent of classified cells, in class order, zeros included."""
    counts = Counter(labels)
    total = sum(counts[c] for c in classes)
    return [{"class": c, "cells": counts[c], "percent": round(100 * counts[c] / total, 1) if total else 0.0}
            for c in classes]

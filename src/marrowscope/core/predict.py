"""Predictor: the one inference path from files to probabilities, shared by predict, evaluate,
calibrate, the app and the DDP ranks.

file/upload -> :meth:`Predictor.load` (the one decoder; :class:`~marrowscope.core.preprocess.Preprocess`:
training scale, then the model folder's eval transform) -> :meth:`Predictor.forward` (the backend;
4 views with TTA; pooled features for the domain check) -> images the domain check flags read a second
time, smaller (:meth:`Predictor.read_again`) -> :func:`probs_from_logits` (temperature, softmax, average
over views and readings) -> the review policy (:mod:`marrowscope.core.policy`): one :class:`Prediction`
per image, holding everything a CSV row, a report or the app shows. Unreadable inputs become
:class:`Unreadable` (its ``reason`` says why) and the rest go on.

The model folder is loaded once. Backends: ONNX Runtime when the folder holds ``model.onnx``
(fastest on CPU; this path imports neither torch nor timm: images are numpy arrays from decoding to
the network), else PyTorch with ``channels_last`` and ``inference_mode``.
"""

from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from importlib.util import find_spec
from itertools import islice
from pathlib import Path
from typing import Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np

from marrowscope.core.artifacts import read_model_info, resolve_model_dir
from marrowscope.core.cam import MAPS_OUTPUT
from marrowscope.core.config import BACKENDS, ONNX_FILES, REVIEW_BELOW
from marrowscope.core.domain import DomainCheck, flagged
from marrowscope.core.errors import ImageDecodeError, MarrowscopeError, Unreadable
from marrowscope.core.images import ImageSource, decode_image
from marrowscope.core.policy import Policy
from marrowscope.core.preprocess import Preprocess
from marrowscope.core.scale import Scale


@dataclass
class Prediction:
    """Everything marrowscope says of one image; every entry point only shows it.

    ``probs``: calibrated probabilities over the model's classes. ``call``: the predicted class (the most
    probable one, unless the blast weight calls a blast) and ``probability``: its probability.
    ``decision``: accepted, review or possible-blast (:mod:`marrowscope.core.policy`). ``set``: the
    prediction set, most probable first (None for an unusual image or a folder without sets).
    ``unusual``: the domain check finds the image unlike the training images (None: no check).
    ``domain_score``: its score (None without one). ``scale``: the scale it was read at; ``blur_px``: the
    blur focus matching gave it (0.0: none; None where the model folder has no focus settings).
    ``network``: in an adapted folder that carries its home model, "home" where that model's domain check
    found the image like its training images and its whole prediction was kept, "lab" where the adapted
    network's was used; "" for any other folder.
    """

    source: str
    probs: np.ndarray
    call: str = ""
    probability: float = 0.0
    decision: str = ""
    set: Optional[tuple[str, ...]] = None
    unusual: Optional[bool] = None
    domain_score: Optional[float] = None
    scale: Optional[Scale] = None
    blur_px: Optional[float] = None
    network: str = ""

    ok = True  # an Unreadable has ok False and a reason

    def top_k(self, classes: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
        return top_k(self.probs, classes, k)


Result = Union[Prediction, Unreadable]


class Raw(NamedTuple):
    """One image before the softmax: its [V, C] logits, scale, domain score, [D] features, focus blur and the
    [V, C] logits of its second reading (None unless the domain check flagged it); ``home``: the adapted
    folder's home model's :class:`Raw` of it where that model finds it usual (None otherwise)."""

    source: str
    logits: np.ndarray
    scale: Optional[Scale]
    domain_score: Optional[float]
    features: Optional[np.ndarray]
    blur_px: Optional[float] = None
    again: Optional[np.ndarray] = None
    home: Optional["Raw"] = None


def tta_views(batch: np.ndarray, tta: bool) -> np.ndarray:
    """The [N, 3, H, W] batch, or [batch; mirror; 90-degree turn; mirrored turn] stacked along the batch
    axis: a cell has no orientation, so all four views should get the same answer."""
    if not tta:
        return batch
    mirror = batch[..., ::-1]
    return np.ascontiguousarray(np.concatenate([batch, mirror, np.rot90(batch, 1, (2, 3)),
                                                np.rot90(mirror, 1, (2, 3))]))


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


def decide(source: str, probs: np.ndarray, classes: Sequence[str], policy: Policy, unusual: Optional[bool] = None,
           **read) -> Prediction:
    """The one place where a cell's call, decision and prediction set are decided: ``policy`` applied to
    its ``probs``; the blast weight and the set only where the domain check finds the image usual
    (``unusual`` None: no check). ``read``: the other :class:`Prediction` fields (scale, blur, score)."""
    calls = policy.apply(probs, classes, np.array([not unusual]))
    pset = calls.sets[0]
    return Prediction(source, probs, classes[int(calls.pred[0])], float(calls.prob[0]), str(calls.decision[0]),
                      None if pset is None else tuple(pset), unusual, **read)


class Predictor:
    """Classify cell images with a model folder.

    Example::

        p = Predictor("models/default")
        p.predict("cell.jpg")          # {"BLA": 0.91, "PMO": 0.05, ...}, descending

    Every setting is chosen here, when the predictor is built. ``tta`` averages over flips and
    90-degree turns (4x the compute); by default the model folder's own setting decides, and the
    temperature fitted for that setting is applied. ``review_below``: no cell whose call's probability
    is lower is accepted (on top of the folder's fitted policy, which it can only make stricter; the
    whole rule for a folder without one). ``domain_check``: False leaves the folder's domain check off
    (to fit a new one). ``second_reading``: False reads every image once, even where the folder
    chose a second reading of unusual images (to choose one). ``device`` places the PyTorch backend's
    network (default: CPU).

    A folder written by labelled ``adapt`` carries the model it was adapted from (``home/``). With the
    domain check on, every image is read by that model first, and those its own domain check finds like
    its training images keep its whole prediction: its calls, blast weight and accept rule, which were
    fitted on its lab's held-out cells and which the adapted network's cannot be without them. The rest,
    the new lab's cells, get the adapted network's, which reads only them. Fits (:meth:`stacked_logits`,
    and predictors built with ``domain_check=False``) read the adapted network alone.
    """

    def __init__(self, model_dir: Optional[str | Path] = None, backend: str = "auto", threads: Optional[int] = None,
                 tta: Optional[bool] = None, pixel_size: Optional[float] = None, device: Optional[str] = None,
                 review_below: Optional[float] = None, domain_check: bool = True, second_reading: bool = True):
        if backend not in BACKENDS:
            raise MarrowscopeError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}.")
        self.model_dir = resolve_model_dir(model_dir)
        self.info = read_model_info(self.model_dir)
        self.classes = self.info.classes
        self.preprocess = Preprocess.for_model(self.info, pixel_size)
        self.tta = self.info.tta if tta is None else tta
        # fitted on validation images by `marrowscope calibrate`; 1.0 = the network's own softmax
        self.temperature = self.info.temperature(self.tta)
        # which cells are accepted, reviewed or flagged as possible blasts (fitted with the temperature)
        self.policy = Policy.from_settings(self.info.policy(self.tta), REVIEW_BELOW if review_below is None
                                           else review_below).at_least(review_below)
        if self.info.label_free:  # fitted without labels: the accept guarantee was never checked on this lab
            self.policy = self.policy.at_least(math.inf)
        # what the caller chose, for :meth:`again`
        self.settings = {"backend": backend, "threads": threads, "tta": tta, "pixel_size": pixel_size,
                         "device": device, "review_below": review_below, "domain_check": domain_check,
                         "second_reading": second_reading}
        self.backend = self._choose_backend(backend)
        self.net, self.session = None, None
        if self.backend in ONNX_FILES:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(self.model_dir / ONNX_FILES[self.backend]), opts,
                                                providers=["CPUExecutionProvider"])
            self.input_name = self.session.get_inputs()[0].name
            # the outputs a prediction reads (a file may also hold feature maps, for explanations)
            self.outputs = [o.name for o in self.session.get_outputs() if o.name != MAPS_OUTPUT]
        else:  # torch and timm load only for this backend: the ONNX path runs without them
            import torch

            from marrowscope.core.artifacts import load_model_folder
            from marrowscope.core.model import WithFeatures

            if threads:
                torch.set_num_threads(threads)
            self.net = WithFeatures(load_model_folder(self.model_dir)[0]).to(memory_format=torch.channels_last)
            if device:  # PyTorch backend only: e.g. "cuda" for cross-validation predictions on a GPU
                self.net = self.net.to(device)
        self.domain = DomainCheck.load(self.model_dir) if domain_check else None
        # ONNX files exported before the domain check give logits only: the check is off with them
        has_features = self.session is None or len(self.outputs) > 1
        self.unusual_above = self.domain.threshold if self.domain is not None and has_features else None
        self.second_zoom = self.info.second_zoom if self.info.scale and second_reading else None
        # read once: the images it keeps are usual to it, and a second reading is only for unusual ones
        home = self.info.home if domain_check else None
        self.home = Predictor(home, **{**self.settings, "backend": "torch" if backend == "torch" else "auto",
                                       "second_reading": False}) if home else None

    def again(self, model_dir: Optional[str | Path] = None, **changes) -> "Predictor":
        """A new predictor with the settings this one was built with, on another model folder (default:
        the same) and with ``changes`` (e.g. ``tta=True``)."""
        return Predictor(model_dir or self.model_dir, **{**self.settings, **changes})

    def _choose_backend(self, backend: str) -> str:
        if backend == "auto":  # the fastest that is there: INT8 (where its export checked it), fp32, PyTorch
            # an INT8 file whose agreement with fp32 was not checked where it was made is never picked on its own
            checked = [b for b in ("onnx-int8", "onnx") if b == "onnx" or self.info.extra.get("int8")]
            backend = next((b for b in checked if (self.model_dir / ONNX_FILES[b]).is_file()), "torch")
            return backend if backend == "torch" or find_spec("onnxruntime") else "torch"
        if backend in ONNX_FILES and not (self.model_dir / ONNX_FILES[backend]).is_file():
            raise MarrowscopeError(f"--backend {backend}: '{self.model_dir / ONNX_FILES[backend]}' is missing; run "
                                   f"`marrowscope export-onnx{' --int8' if backend == 'onnx-int8' else ''} "
                                   f"--model {self.model_dir}` first.")
        return backend

    def load(self, src: ImageSource, name: Optional[str] = None, pixel_size: Optional[float] = None,
             zoom: float = 1.0, route: bool = True
             ) -> Union[tuple[np.ndarray, Optional[Scale], Optional[float]], Unreadable]:
        """Decode (the one decoder) and preprocess one source to ([3, H, W], its scale, its focus blur), or
        say why it cannot be read. ``pixel_size`` (µm per pixel) overrides the estimate for this call;
        ``zoom`` draws the cell that much larger or smaller than at the training scale. In an adapted folder
        (``route``), as its home model reads it: the home reads every image first (:meth:`infer`)."""
        reader = self.home if route and self.home is not None else self
        try:
            return reader.preprocess(decode_image(src), pixel_size, zoom)
        except ImageDecodeError as exc:
            return Unreadable(name if name is not None else _name(src, 0), str(exc))

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
        """[N, 3, H, W] float32 -> ([V, N, C] logits, V = 1 or 4 views with ``tta``; [N, D] pooled
        features of the first view, or None from an ONNX file without them; [N] domain scores, or None
        without domain statistics)."""
        views = tta_views(batch, self.tta)
        if self.session is not None:
            outputs = self.session.run(self.outputs, {self.input_name: views})
            logits, feats = outputs[0], (outputs[1] if len(outputs) > 1 else None)
        else:
            import torch

            device = next(self.net.parameters()).device
            with torch.inference_mode():
                out = self.net(torch.from_numpy(views).to(device).contiguous(memory_format=torch.channels_last))
            logits, feats = (t.float().cpu().numpy() for t in out)
        feats = None if feats is None else feats[: len(batch)]
        scores = self.domain.score(feats) if self.domain is not None and feats is not None else None
        return logits.reshape(-1, len(batch), logits.shape[-1]), feats, scores

    def infer(self, sources: Sequence[ImageSource], names: Sequence[str], loaded: Sequence[tuple],
              pool: Optional[ThreadPoolExecutor] = None, route: bool = True) -> list[Raw]:
        """The :class:`Raw` results of images :meth:`load` has read with the same ``route`` (``loaded``: its
        tensors, scales and blurs), the flagged ones read a second time: the one step after decoding that a
        batch, a single image and a DDP rank share. In an adapted folder (``route``), the home model reads
        every image first and keeps the ones its domain check finds usual (their ``home`` set: decoded once,
        as the home model alone reads them); this network reads only the rest, at the scale first found."""
        if not (route and self.home is not None):
            return self._read(sources, names, loaded, pool)
        out = self.home.infer(sources, names, loaded, pool)
        todo = [k for k, r in enumerate(out) if self.home.unusual_above is None
                or flagged(r.domain_score, self.home.unusual_above)]
        loads = (pool.map if pool else map)(
            lambda k: self.load(sources[k], names[k], _um(loaded[k][1]), route=False), todo)
        mine = {k: x for k, x in zip(todo, loads) if not isinstance(x, Unreadable)}
        raws = dict(zip(mine, self._read([sources[k] for k in mine], [names[k] for k in mine],
                                         [(x[0], loaded[k][1], x[2]) for k, x in mine.items()], pool)
                        if mine else []))
        # an image that cannot be read again (changed since) keeps the home model's reading, flagged unusual
        return [raws[k] if k in raws else r._replace(home=r) for k, r in enumerate(out)]

    def _read(self, sources: Sequence[ImageSource], names: Sequence[str], loaded: Sequence[tuple],
              pool: Optional[ThreadPoolExecutor] = None) -> list[Raw]:
        """This folder's own network's :class:`Raw` of each loaded image, the flagged ones read again."""
        logits, feats, scores = self.forward(np.stack([x[0] for x in loaded]))
        again = self.read_again(sources, [x[1] for x in loaded], scores, pool)
        return [Raw(name, logits[:, k], x[1], None if scores is None else float(scores[k]),
                    None if feats is None else feats[k], x[2], again[k])
                for k, (name, x) in enumerate(zip(names, loaded))]

    def stream_logits(self, sources: Sequence[ImageSource], names: Optional[Sequence[str]] = None,
                      batch_size: int = 32, workers: Optional[int] = None, pixel_size: Optional[float] = None,
                      route: bool = True) -> Iterator[Union[Raw, Unreadable]]:
        """A :class:`Raw` result or :class:`Unreadable` per source, in input order; decoding runs in
        threads one batch ahead of the model. ``route``: False reads every image with this folder's own
        network, even in an adapted folder (for fits)."""
        names = list(names) if names is not None else [_name(s, i) for i, s in enumerate(sources)]
        with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
            pending: deque = deque()
            it = iter(zip(names, sources))
            for name, src in islice(it, batch_size * 2):
                pending.append((name, src, pool.submit(self.load, src, name, pixel_size, 1.0, route)))
            while pending:
                chunk = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
                for name, src in islice(it, len(chunk)):  # keep the decoders one batch ahead
                    pending.append((name, src, pool.submit(self.load, src, name, pixel_size, 1.0, route)))
                loaded = [(name, src, fut.result()) for name, src, fut in chunk]
                ok = [(src, name, x) for name, src, x in loaded if not isinstance(x, Unreadable)]
                raws = iter(self.infer(*map(list, zip(*ok)), pool, route) if ok else [])
                for _, _, x in loaded:
                    yield x if isinstance(x, Unreadable) else next(raws)

    def stacked_logits(self, sources: Sequence[ImageSource], names: Optional[Sequence[str]] = None
                       ) -> tuple[Optional[np.ndarray], list[int], list[Unreadable]]:
        """[V, N, C] logits of the sources that could be read (None if none could), their indices in
        ``sources``, and the unreadable ones: for fits and cross-validation, which need every view (of
        this folder's own network, even in an adapted folder)."""
        logits, kept, bad = [], [], []
        for i, r in enumerate(self.stream_logits(sources, names, route=False)):
            if isinstance(r, Unreadable):
                bad.append(r)
            else:
                logits.append(r.logits)
                kept.append(i)
        return (np.stack(logits, axis=1) if logits else None), kept, bad

    def predict_many(self, sources: Sequence[ImageSource], batch_size: int = 32, workers: Optional[int] = None,
                     names: Optional[Sequence[str]] = None, pixel_size: Optional[float] = None) -> Iterator[Result]:
        """A :class:`Prediction` or an :class:`Unreadable` per source, in input order."""
        for r in self.stream_logits(sources, names, batch_size, workers, pixel_size):
            yield r if isinstance(r, Unreadable) else self.finish(r)

    def finish(self, r: Raw) -> Prediction:
        """The :class:`Prediction` of a :class:`Raw` result: its probabilities, its unusual flag, then
        :func:`decide`; in an adapted folder, the home model's own where it kept the image."""
        if r.home is not None:
            return replace(self.home.finish(r.home), network="home")
        return decide(r.source, self.probs(r.logits, r.again), self.classes, self.policy,
                      flagged(r.domain_score, self.unusual_above), domain_score=r.domain_score, scale=r.scale,
                      blur_px=r.blur_px, network="" if self.home is None else "lab")

    def probs(self, logits: np.ndarray, again: Optional[np.ndarray] = None) -> np.ndarray:
        """[C] probabilities of one image's [V, C] logits and its second reading's (or None): softmax at the
        folder's temperature, averaged over the views of each reading, each reading weighing the same."""
        views = logits if again is None else np.concatenate([logits, again])
        return probs_from_logits(views[:, None], self.temperature)[0]

    def predict(self, src: ImageSource, pixel_size: Optional[float] = None) -> dict[str, float]:
        """One image -> {class: probability} over all classes, most probable first.

        Raises:
            ImageDecodeError: the image cannot be read.
        """
        return dict(top_k(self.predict_one(src, pixel_size).probs, self.classes, len(self.classes)))

    def predict_one(self, src: ImageSource, pixel_size: Optional[float] = None) -> Prediction:
        """One image's whole :class:`Prediction` (probabilities, scale, domain score, focus blur).

        Raises:
            ImageDecodeError: the image cannot be read.
        """
        # the same load and forward as a batch, without a batch's decoding threads
        loaded = self.load(src, pixel_size=pixel_size)
        if isinstance(loaded, Unreadable):
            raise ImageDecodeError(loaded.reason)
        return self.finish(self.infer([src], [_name(src, 0)], [loaded])[0])

    def read_again(self, sources: Sequence[ImageSource], scales: Sequence[Optional[Scale]],
                   scores: Optional[np.ndarray], pool: Optional[ThreadPoolExecutor] = None,
                   zoom: Optional[float] = None) -> list:
        """[V, C] logits of a second reading, the cell drawn ``second_zoom`` times its size, of each image the
        domain check flags; None for the rest, and for all where the folder chose no zoom. ``pool``: threads
        to decode them in; ``zoom``: every image read again at that zoom, flagged or not (to measure one).
        Why: the bundled network took another lab's blood lymphocytes and monocytes for blasts at the red-cell
        scale but mostly not when shown smaller, while its own lab's test images, all read both ways, kept
        their blast recall (README, "Other labs"). Images like the training images keep their one reading."""
        out: list[Optional[np.ndarray]] = [None] * len(sources)
        if not zoom and (not self.second_zoom or self.unusual_above is None or scores is None):
            return out
        todo = [i for i, sc in enumerate(scales) if sc is not None and (zoom or flagged(scores[i], self.unusual_above))]
        zoom = zoom or self.second_zoom
        # at the first reading's pixel size (no second estimate), which passed Preprocess.check_pixel_size
        loads = (pool.map if pool else map)(lambda i: self.load(sources[i], None, scales[i].pixel_size_um, zoom,
                                                                    route=False), todo)
        loaded = [(i, x) for i, x in zip(todo, loads) if not isinstance(x, Unreadable)]  # changed since: once
        if loaded:
            logits = self.forward(np.stack([x[0] for _, x in loaded]))[0]
            for k, (i, _) in enumerate(loaded):
                out[i] = logits[:, k]
        return out



def _um(scale: Optional[Scale]) -> Optional[float]:
    return scale.pixel_size_um if scale else None


def _name(src: object, i: int) -> str:
    return str(src) if isinstance(src, (str, Path)) else f"image {i}"

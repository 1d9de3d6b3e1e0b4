"""The app's models per session: the bundled one, or one adapted in this session to its reviewed cells.

"Adapt the model to these cells" (Review tab) exports the reviewed cells, runs ``marrowscope adapt``
on them with a progress bar, offers the adapted model folder as a zip, and switches this session,
and only this session, to it; "Fit to this batch's lab (no labels)" (Batch tab) does the same with
``marrowscope adapt --unlabelled`` on the last batch's cells; "Use the bundled model" switches back.
The adapted folder is owned by the session's state (removed when it expires or is replaced).
Adapting is its own queued event, one at a time, so other users' Classify and Batch keep running
meanwhile.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Optional

import gradio as gr

from marrowscope.apps.views import scratch_dir
from marrowscope.core.artifacts import LABEL_FREE_MIN_CELLS
from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.predict import Predictor


def explainer_for(predictor: Predictor):
    """Where the model looked, by the lightest method the folder allows: the exact class activation map from
    its ONNX file (numpy, no torch; :mod:`marrowscope.core.cam`), else Grad-CAM, loaded in a thread once
    :func:`started` (torch, timm and pytorch-grad-cam). Its ``home``: an adapted folder's home model's own
    explainer (None for other folders), so a call the home model made gets that model's map, never another
    network's."""
    from marrowscope.core.cam import OnnxCam

    explainer = OnnxCam(predictor) if OnnxCam.available(predictor) else LoadingExplainer(predictor.model_dir)
    explainer.home = explainer_for(predictor.home) if predictor.home is not None else None
    return explainer


def started(explainer):
    """``explainer`` (and its home's), Grad-CAM's loading started where it loads in a thread."""
    for e in (explainer, getattr(explainer, "home", None)):
        if isinstance(e, LoadingExplainer):
            e.start()
    return explainer


class LoadingExplainer:
    """Grad-CAM of a model folder, built in a thread started with the server (:meth:`start`): the server
    answers at once rather than after torch, timm and the network have loaded, and a Classify that comes
    before the map can be drawn answers without it first (``ready`` False), then with it."""

    name = "Grad-CAM (pytorch-grad-cam)"

    def __init__(self, model_dir: Path):
        self.model_dir, self._explainer, self._error = Path(model_dir), None, None
        self._done = threading.Event()

    def start(self) -> "LoadingExplainer":
        threading.Thread(target=self._load, name="load-grad-cam", daemon=True).start()
        return self

    def _load(self) -> None:
        try:
            from marrowscope.report.explain import Explainer

            self._explainer = Explainer(self.model_dir)
        except Exception as exc:  # said on first use, as a sentence
            self._error = exc
        finally:
            self._done.set()

    @property
    def ready(self) -> bool:
        return self._done.is_set()

    def overlay(self, *args, **kwargs):
        self._done.wait()
        if self._error is not None:
            raise MarrowscopeError(f"the Grad-CAM map cannot be drawn: {self._error}")
        return self._explainer.overlay(*args, **kwargs)


class SessionModels:
    """Predictors (and Grad-CAM explainers, an adapted folder's with its home's) by model folder, each loaded
    once and dropped with the session's folder."""

    def __init__(self, predictor: Predictor, explainer=None):
        self.default, self.explain = (predictor, explainer), explainer is not None
        self._loaded: dict[str, tuple] = {}
        self._lock = threading.Lock()

    def get(self, model_state: Optional[dict]) -> tuple:
        """(predictor, explainer) of the session's model: the adapted one where there is one."""
        folder = (model_state or {}).get("model")
        if not folder or not Path(folder).is_dir():
            return self.default
        with self._lock:
            if folder not in self._loaded:
                # the same settings as the bundled model's predictor, on the adapted folder
                predictor = self.default[0].again(folder)
                explainer = started(explainer_for(predictor)) if self.explain else None
                self._loaded[folder] = (predictor, explainer)
            return self._loaded[folder]

    def drop(self, model_state: Optional[dict]) -> None:
        """Forget a session's adapted model and remove its folder (the state's delete callback)."""
        if model_state and model_state.get("dir"):
            with self._lock:
                self._loaded.pop(model_state.get("model"), None)
            shutil.rmtree(model_state["dir"], ignore_errors=True)


def banner(models: SessionModels, model_state: Optional[dict]) -> str:
    predictor = models.get(model_state)[0]
    if predictor is models.default[0]:
        return f"Model in use: **{predictor.model_dir.name}** (bundled)."
    return (f"Model in use: **adapted in this session** from {models.default[0].model_dir.name} "
            f"({model_state['summary']}). Use the bundled model to switch back.")


def _training(what: str):
    """The adapting module, or a sentence where this installation has no PyTorch (a light Space)."""
    import importlib

    try:
        return importlib.import_module(f"marrowscope.fit.{what}")
    except ImportError:  # a light installation (a Space without torch): the rest of the app serves on
        raise gr.Error("Adapting changes the network, which needs PyTorch; this installation has none. Export the "
                       "cells and run `marrowscope adapt` where marrowscope is fully installed.") from None


def _switch(models: SessionModels, model_state: Optional[dict], run, work: Path, summary, note) -> tuple:
    """Run ``run(folder)`` (it writes a model folder), then switch the session to it -> (zip of the folder,
    note, new model state, banner); the previous adapted model of the session is removed, and a failed run
    leaves the session as it was."""
    try:
        s = run(work / "model")
    except MarrowscopeError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise gr.Error(str(exc)) from None
    zipped = shutil.make_archive(str(work / "adapted-model"), "zip", work / "model")
    new_state = {"dir": str(work), "model": str(work / "model"), "summary": summary(s)}
    models.drop(model_state)
    return zipped, note(s), new_state, banner(models, new_state)


def adapt_to_review(models: SessionModels, archive: Path, model_state: Optional[dict],
                    epochs: Optional[int] = None, progress=gr.Progress(track_tqdm=True)):
    """Adapt the session's model to a reviewed.zip -> (zip of the adapted folder, note, new model state,
    banner)."""
    adapt = _training("adapt").adapt
    source = models.get(model_state)[0].model_dir
    progress(0, desc="adapting the model to the reviewed cells")

    def note(s: dict) -> str:
        measured = "" if s.get("accuracy_after") is None else \
            f" Held-out accuracy on {s['held_out']} of your cells: {s['accuracy_before']:.2f} before, " \
            f"{s['accuracy_after']:.2f} after (95% interval {s['interval_after'][0]:.2f}-" \
            f"{s['interval_after'][1]:.2f}: one cell is {100 / s['held_out']:.0f} points)."
        return (f"Adapted on {_reviewed_summary(s)}.{measured} This session now uses the adapted model; cells like "
                "the first model's training cells are still read by that model, which the folder keeps. Download it "
                "below (a model folder for `--model`).")

    return _switch(models, model_state, lambda out: adapt(archive, source, out, epochs=epochs), scratch_dir("adapted"),
                   _reviewed_summary, note)


def _reviewed_summary(s: dict) -> str:
    return f"{s['cells']} reviewed cells, {s['replayed']} of its own images replayed"


def fit_to_batch(models: SessionModels, cells: list, model_state: Optional[dict],
                 progress=gr.Progress(track_tqdm=True)):
    """Fit the session's model to the lab of the last batch's cells, without labels (``adapt --unlabelled``:
    its pixel size and normalisation statistics) -> (zip, note, new model state, banner). Cells of the
    fitted model are never accepted, as on the command line."""
    label_free = _training("label_free")
    if len(cells) < LABEL_FREE_MIN_CELLS:
        raise gr.Error(f"The last batch has {len(cells)} readable cell(s); fitting a lab without labels needs at "
                       f"least {LABEL_FREE_MIN_CELLS}. Classify a larger batch of this lab's cells first.")
    source = models.get(model_state)[0].model_dir
    work = scratch_dir("adapted")
    lab = work / "cells"
    lab.mkdir()
    try:
        for k, (name, path) in enumerate(cells):  # numbered: two uploads may share a name
            shutil.copyfile(path, lab / f"{k:05d}_{Path(name).name}")
    except FileNotFoundError:
        shutil.rmtree(work, ignore_errors=True)
        raise gr.Error("This batch's files have expired; classify the batch again.") from None
    progress(0, desc="fitting the model to this batch's lab (no labels)")

    def run(out: Path) -> dict:
        try:
            return label_free.adapt_unlabelled(lab, source, out)
        finally:
            shutil.rmtree(lab, ignore_errors=True)

    def note(s: dict) -> str:
        um = (f"its pixel size {s['pixel_size_um']:.4f} µm" if s["pixel_size_um"]
              else "no pooled pixel size (no red cells)")
        warn = f"**Warning:** {s['warning']}\n\n" if s["warning"] else ""
        return (f"{warn}Fitted without labels on {s['images']} cells of the last batch ({um}; {s['batch_norm']}). "
                "This session now uses the fitted model: its cells are **never accepted**, since no label checked "
                "the accept guarantee on this lab; review them, or correct a few per class in the Review tab and "
                "adapt. Classify the batch again to read it with the fitted model; download it below.")

    return _switch(models, model_state, run, work, lambda s: f"fitted without labels on {s['images']} cells",
                   note)


def use_bundled(models: SessionModels, model_state: Optional[dict]):
    """Switch the session back to the bundled model -> (note, empty state, banner)."""
    models.drop(model_state)
    return "Switched back to the bundled model.", {}, banner(models, {})

"""The Gradio app: classify one cell, count a batch or whole fields, review labels, and see the model and its data.

``build_demo(predictor)`` returns the ``gr.Blocks``; ``marrowscope app`` and the Space's
``app.py`` launch it. Handlers are plain functions of their inputs (tested without a browser) that
call the library (uploads, batch, review, views); library errors become ``gr.Error`` sentences,
never tracebacks. Each batch's files live in one folder owned by the session's state, removed when
the next batch replaces it or the state expires; Gradio's own cache is swept too (``delete_cache``).
"""

from __future__ import annotations

import atexit
import shutil
from pathlib import Path
from typing import Optional

import gradio as gr

from marrowscope.apps.app_models import (
    SessionModels,
    adapt_to_review,
    banner,
    explainer_for,
    fit_to_batch,
    started,
    use_bundled,
)
from marrowscope.apps.field_view import field_tab
from marrowscope.apps.review import export_review
from marrowscope.apps.views import cell_advice, data_views, example_images, model_views, scratch_dir
from marrowscope.core.artifacts import LABEL_FREE_MIN_CELLS as MIN_UNLABELLED
from marrowscope.core.batch import UNUSUAL_WARNING, BatchResult
from marrowscope.core.classes import FULL_NAMES, display_name
from marrowscope.core.errors import MarrowscopeError, Unreadable
from marrowscope.core.images import IMAGE_EXTENSIONS
from marrowscope.core.predict import Predictor
from marrowscope.core.uploads import expand_uploads
from marrowscope.report.plots import count_figure

MAX_UPLOAD = "50mb"              # per file, enforced by Gradio before a handler runs (a whole field's JPEG fits)
STATE_TTL_S = 3600               # a session's batch folder goes an hour after its last use
CACHE_SWEEP = (3600, 3600)       # every hour, Gradio deletes its cached files older than an hour
BATCH_STEP = 64                  # images between the Batch view's updates (each one Cancel keeps)


class CellImage(gr.Image):
    """``gr.Image`` that hands the uploaded file to marrowscope's decoder unopened, so that a
    corrupt or odd upload gets marrowscope's sentence rather than Gradio's own PIL error.
    ``is_template`` makes Gradio draw it with the ordinary Image front end."""

    is_template = True

    def preprocess(self, payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return super().preprocess(payload)


def classify(predictor: Predictor, explainer, image_path: Optional[str], pixel_size: Optional[float] = None):
    """One image -> ({display name: probability} of the top 3, Grad-CAM overlay or None, advice).
    ``pixel_size`` (µm per pixel; None or 0: estimated) sets the image's scale."""
    if not image_path:
        raise gr.Error("Upload, paste or drop a cell image first.")
    try:
        pred = predictor.predict_one(image_path, pixel_size or None)
        if pred.network == "home":  # an adapted folder kept its home model's prediction: its rules and map
            predictor, explainer = predictor.home, getattr(explainer, "home", None)
        # the overlay reuses the pixel size the prediction used, rather than estimating it again
        used = pixel_size or (pred.scale.pixel_size_um if pred.scale else None)
        call = predictor.classes.index(pred.call)  # the most probable class, or a blast
        overlay = explainer.overlay(image_path, call, pixel_size=used) if explainer else None
    except MarrowscopeError as exc:
        raise gr.Error(_tidy(str(exc), image_path, Path(image_path).name)) from None
    top = pred.top_k(predictor.classes, 3)
    advice = cell_advice(predictor.policy, predictor.classes, pred)
    if pred.unusual:
        advice = "**Warning:** this image looks unlike the images the model learnt from: results may be wrong.\n\n" \
                 + advice + (f"\n\nRead twice, as it is and with the cell at {predictor.second_zoom:g} of its size, "
                             "and the two averaged (README, \"Other labs\")." if predictor.second_zoom else "")
    if pred.network:
        advice += ("\n\nRead by the model this one was adapted from: the image is like its own training images, "
                   "so its call, blast rule and accept rule hold." if pred.network == "home" else
                   "\n\nRead by the adapted network: the image is unlike the training images of the model it was "
                   "adapted from.")
    if pred.scale is not None:
        advice += f"\n\nScale: {pred.scale}."
    if overlay is not None:
        advice += f"\n\nMap: {explainer.name}."
    if pred.blur_px:
        advice += (f"\n\nFocus: crisper than the training images, so blurred by {pred.blur_px:.1f} px to their "
                   "usual sharpness before classifying.")
    return {display_name(c): v for c, v in top}, overlay, advice


def classify_steps(predictor: Predictor, explainer, image_path: Optional[str], pixel_size: Optional[float] = None):
    """:func:`classify` for the Classify button: while the Grad-CAM network is still loading (just after
    start-up), the call and advice at once, then again with the map."""
    if explainer is None or getattr(explainer, "ready", True):
        yield classify(predictor, explainer, image_path, pixel_size)
        return
    top, _, advice = classify(predictor, None, image_path, pixel_size)
    yield top, None, advice + "\n\n*The Grad-CAM map follows in a moment.*"
    yield classify(predictor, explainer, image_path, pixel_size)


def _tidy(message: str, path, name: str) -> str:
    """Show the user's file name, not the server's temporary path."""
    return message.replace(f"'{path}'", f"'{name}'")


def drop_batch(state: Optional[dict]) -> None:
    """Remove a batch's folder (its zip members, CSVs and review export)."""
    if state and state.get("dir"):
        shutil.rmtree(state["dir"], ignore_errors=True)


def batch(predictor: Predictor, files: Optional[list], state: Optional[dict] = None,
          pixel_size: Optional[float] = None):
    """Many images (or zips) -> per-image table, differential count table and chart, CSVs, notes,
    review rows and the new state (the previous batch's folder is removed): the last step of
    :func:`batch_steps`."""
    *_, last = batch_steps(predictor, files, state, pixel_size)
    return last


def batch_steps(predictor: Predictor, files: Optional[list], state: Optional[dict] = None,
                pixel_size: Optional[float] = None, every: int = BATCH_STEP):
    """:func:`batch` as it goes: after every ``every`` images, the same outputs for the cells finished so
    far (their table, counts and CSVs), then the whole batch's. Cancelled in the app, the last step stays
    on screen and its CSVs stay downloadable: finished cells are never lost."""
    paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
    if not paths:
        raise gr.Error("Upload one or more cell images, or a zip of them.")
    drop_batch(state)
    workdir = scratch_dir("batch")
    uploads = expand_uploads(paths, workdir)
    try:
        predictor.preprocess.check_pixel_size(pixel_size)
    except MarrowscopeError as exc:
        raise gr.Error(str(exc)) from None
    result = BatchResult.for_predictor(predictor, 3)
    cells = []
    stream = predictor.predict_many(uploads.files, names=uploads.names, pixel_size=pixel_size or None)
    total = len(uploads.files)
    for k, (item, path, name) in enumerate(zip(stream, uploads.files, uploads.names), 1):
        if isinstance(item, Unreadable):
            item = Unreadable(name, _tidy(item.reason, path, name))
        else:
            cells.append((name, str(path)))
        result.add(item, name)
        if k % every == 0 and k < total:
            yield _batch_view(result, cells, workdir, f"**Classifying: {k} of {total} images so far.** Cancel keeps "
                                                      "these rows and their CSVs.\n\n")
    for problem in uploads.problems:
        result.add(problem)
    yield _batch_view(result, cells, workdir, "")


def _batch_view(result: BatchResult, cells: list, workdir: Path, heading: str) -> tuple:
    """The Batch view's outputs for the rows ``result`` holds, their CSVs written (atomically) beside."""
    csv_path, counts_path = result.write(workdir / "predictions.csv")
    rows = [[r["file"], display_name(r["predicted"]) if r["predicted"] else "unreadable",
             r["probability"], _top3_text(r), r["decision"], r.get("set", ""), r.get("unusual", "")]
            for r in result.rows]
    counts = [[display_name(c["class"]), c["cells"], c["percent"]] for c in result.counts]
    decisions = [[d, n] for d, n in result.decision_counts.items()]
    errors = [f"- {r['file']}: {r['error']}" for r in result.errors]
    note = (f"Classified {len(result.classified)} cell(s): " +
            ", ".join(f"{n} {d}" for d, n in result.decision_counts.items()) + f". Rule: {result.policy.describe()}.")
    if result.unusual:
        note = f"**Warning:** {len(result.unusual)} of {len(result.classified)} image(s): {UNUSUAL_WARNING}\n\n" + note
    if errors:
        note += f"\n\n**{len(errors)} problem(s):**\n" + "\n".join(errors)
    review_rows = [[r["file"], r["predicted"], r["probability"], r["predicted"]] for r in result.classified]
    new_state = {"dir": str(workdir), "cells": list(cells)}
    return (rows, counts, decisions, count_figure(result.counts), [str(csv_path), str(counts_path)], heading + note,
            review_rows, new_state)


def _top3_text(row: dict) -> str:
    return ", ".join(f"{row[f'top{i}']} {row[f'p{i}']:.2f}" for i in (1, 2, 3) if row.get(f"top{i}"))


def _reviewed(classes: list[str], review_rows, state: Optional[dict]) -> tuple[Path, Path, int]:
    """The edited review table -> (reviewed.zip, labels.csv, cells), or a sentence."""
    if not state or not state.get("cells"):
        raise gr.Error("Classify a batch first; its cells appear here for review.")
    rows = review_rows.values.tolist() if hasattr(review_rows, "values") else list(review_rows or [])
    try:
        return export_review(classes, rows, state["cells"], Path(state["dir"]))
    except MarrowscopeError as exc:
        raise gr.Error(str(exc)) from None
    except FileNotFoundError:
        raise gr.Error("This batch's files have expired; classify the batch again.") from None


def review_export(classes: list[str], review_rows, state: Optional[dict]):
    """The edited review table -> reviewed.zip and labels.csv for download."""
    archive, labels_csv, n = _reviewed(classes, review_rows, state)
    return [str(archive), str(labels_csv)], f"Exported {n} reviewed cell(s)."


def review_adapt(models: SessionModels, classes: list[str], review_rows, state: Optional[dict],
                 model_state: Optional[dict], progress=gr.Progress(track_tqdm=True)):
    """The edited review table -> the session's model adapted to it (see :mod:`marrowscope.apps.app_models`)."""
    return adapt_to_review(models, _reviewed(classes, review_rows, state)[0], model_state, progress=progress)


def batch_fit(models: SessionModels, state: Optional[dict], model_state: Optional[dict],
              progress=gr.Progress(track_tqdm=True)):
    """The last batch's cells -> the session's model fitted to their lab without labels
    (see :mod:`marrowscope.apps.app_models`)."""
    if not state or not state.get("cells"):
        raise gr.Error("Classify a batch of this lab's cells first; the model is fitted to them.")
    return fit_to_batch(models, state["cells"], model_state, progress=progress)


# ---------------------------------------------------------------- layout: one builder per tab
def _pixel_size_box(default: Optional[float]):
    return gr.Number(value=default or 0, minimum=0, label="Pixel size in µm (0: estimate from red cells)")


def _classify_tab(models: SessionModels, model_state, examples: list[str], pixel_size: Optional[float]) -> None:
    with gr.Row():
        with gr.Column():
            image = CellImage(type="filepath", label="Cell image (upload, paste or drop)",
                              sources=["upload", "clipboard"], image_mode=None)
            pixel = _pixel_size_box(pixel_size)
            go = gr.Button("Classify", variant="primary")
        with gr.Column():
            label = gr.Label(num_top_classes=3, label="Top 3 cell types", elem_id="top3")
            advice = gr.Markdown()
            cam = gr.Image(label="Where the model looked (red: most evidence)", interactive=False, elem_id="cam")
    if examples:
        gr.Examples(examples, inputs=image, label="Examples, one per class")
    def classify_view(p, um, ms):  # a generator: the call at once, the map when it can be drawn
        yield from classify_steps(*models.get(ms), p, um)

    go.click(classify_view, [image, pixel, model_state], [label, cam, advice], api_name="classify")


def _batch_and_review_tabs(models: SessionModels, model_state, in_use, pixel_size: Optional[float]) -> None:
    classes = list(models.default[0].classes)
    # the batch folder's owner: removed an hour after last use, or with the next batch
    state = gr.State({}, time_to_live=STATE_TTL_S, delete_callback=drop_batch)
    with gr.Tab("Batch / differential count"):
        files = gr.File(file_count="multiple", label="Cell images or a zip of them",
                        file_types=[*IMAGE_EXTENSIONS, ".zip"])
        pixel = _pixel_size_box(pixel_size)
        with gr.Row():
            run = gr.Button("Classify all", variant="primary")
            stop = gr.Button("Cancel (keeps the cells finished so far)")
        note = gr.Markdown()
        with gr.Row():
            counts = gr.Dataframe(headers=["cell type", "cells", "percent"], label="Differential count")
            decisions = gr.Dataframe(headers=["decision", "cells"], label="Decisions (review policy)")
            chart = gr.Plot(label="Differential count")
        table = gr.Dataframe(headers=["file", "predicted", "probability", "top 3", "decision", "set", "unusual"],
                             label="Per image", wrap=True)
        downloads = gr.File(label="CSV downloads", interactive=False)
        gr.Markdown("Cells from another lab? Fit the model to this batch's lab from its own cells, no labels needed "
                    f"(at least {MIN_UNLABELLED} cells; about a minute per 500; only this session switches to it, "
                    "and its cells are never accepted):")
        fit_go = gr.Button("Fit to this batch's lab (no labels)")
        fit_note = gr.Markdown()
        fitted = gr.File(label="fitted model folder (zip)", interactive=False)
    with gr.Tab("Review"):
        gr.Markdown("Confirm or correct each cell's label (edit the **label** column with a class code: "
                    f"{', '.join(classes)}), then export a training set for `marrowscope train`.")
        review = gr.Dataframe(headers=["file", "predicted", "probability", "label"], interactive=True,
                              label="Cells of the last batch")
        export = gr.Button("Export reviewed labels")
        export_note = gr.Markdown()
        exported = gr.File(label="reviewed.zip (class folders + labels.csv)", interactive=False)
        gr.Markdown("Or adapt the model to these cells (a few minutes; only this session switches to it):")
        with gr.Row():
            adapt_go = gr.Button("Adapt the model to these cells", variant="primary")
            back = gr.Button("Use the bundled model")
        adapt_note = gr.Markdown()
        adapted = gr.File(label="adapted model folder (zip)", interactive=False)
    def run_batch_view(f, s, um, ms):  # a generator: the view fills as the batch goes, and Cancel keeps it
        yield from batch_steps(models.get(ms)[0], f, s, um)

    going = run.click(run_batch_view, [files, state, pixel, model_state],
                      [table, counts, decisions, chart, downloads, note, review, state], api_name="batch")
    stop.click(None, None, None, cancels=[going])
    export.click(lambda r, s: review_export(classes, r, s), [review, state], [exported, export_note],
                 api_name="export_review")
    # its own queued event, one at a time: other sessions' Classify and Batch go on meanwhile
    adapt_go.click(lambda r, s, ms, pr=gr.Progress(track_tqdm=True): review_adapt(models, classes, r, s, ms, pr),
                   [review, state, model_state], [adapted, adapt_note, model_state, in_use], api_name="adapt",
                   concurrency_limit=1)
    fit_go.click(lambda s, ms, pr=gr.Progress(track_tqdm=True): batch_fit(models, s, ms, pr),
                 [state, model_state], [fitted, fit_note, model_state, in_use], api_name="fit_unlabelled",
                 concurrency_limit=1)
    back.click(lambda ms: use_bundled(models, ms), [model_state], [adapt_note, model_state, in_use],
               api_name="use_bundled")


def _model_tab(model_dir: Path) -> None:
    mv = model_views(model_dir)
    gr.Markdown(mv["metrics_note"])
    gr.Dataframe(value=mv["metrics_rows"], headers=["cell type", "precision", "recall", "F1", "support"],
                 label="Per class")
    with gr.Row():
        if mv["curves"]:
            gr.Image(mv["curves"], label="Training curves", interactive=False)
        if mv["confusion"]:
            gr.Image(mv["confusion"], label="Confusion matrix (test split)", interactive=False)
    with gr.Accordion("Model card", open=False):
        gr.Markdown(mv["card"])


def _data_tab(model_dir: Path, classes: list[str]) -> None:
    fig, rows, note = data_views(model_dir, classes)
    gr.Markdown(note)
    if fig is not None:
        gr.Plot(fig, label="Class distribution")
        gr.Dataframe(value=rows, headers=["cell type", "train", "val", "test", "total"])


def build_demo(predictor: Predictor, *, explainer=None, examples_dir: Optional[Path] = None,
               pixel_size: Optional[float] = None) -> gr.Blocks:
    """The app for one loaded model (the model is loaded once, not per request)."""
    classes = list(predictor.classes)
    examples_out = scratch_dir("examples")
    atexit.register(shutil.rmtree, examples_out, True)
    examples = example_images(examples_dir, classes, examples_out)
    title = f"marrowscope: bone-marrow cell classifier ({predictor.info.architecture}, {len(classes)} classes)"
    models = SessionModels(predictor, explainer)
    with gr.Blocks(title="marrowscope", delete_cache=CACHE_SWEEP) as demo:
        gr.Markdown(f"# {title}\nFor research and education; not a medical device. Classes: " +
                    ", ".join(f"{c} {FULL_NAMES.get(c, '')}".strip() for c in classes) + ".")
        model_state = gr.State({}, time_to_live=STATE_TTL_S, delete_callback=models.drop)  # see app_models
        in_use = gr.Markdown(banner(models, {}))
        with gr.Tab("Classify"):
            _classify_tab(models, model_state, examples, pixel_size)
        _batch_and_review_tabs(models, model_state, in_use, pixel_size)
        with gr.Tab("Field count"):
            field_tab(models, model_state, pixel_size)
        with gr.Tab("Model"):
            _model_tab(predictor.model_dir)
        with gr.Tab("Data"):
            _data_tab(predictor.model_dir, classes)
    return demo


def launch(model: Optional[str] = None, host: str = "127.0.0.1", port: int = 7860,
           examples_dir: Optional[str] = None, explain: bool = True, pixel_size: Optional[float] = None,
           **launch_kw):
    """Load the model once and serve the app (127.0.0.1 unless told otherwise)."""
    from marrowscope.core.data import default_data_dir

    predictor = Predictor(model)
    # the exact map from the ONNX file needs nothing more; Grad-CAM's torch, timm and network load once the
    # server answers (see LoadingExplainer)
    explainer = explainer_for(predictor) if explain else None
    examples = Path(examples_dir) if examples_dir else default_data_dir()
    demo = build_demo(predictor, explainer=explainer, examples_dir=examples, pixel_size=pixel_size)
    demo.queue(default_concurrency_limit=4)
    blocking = not launch_kw.pop("prevent_thread_lock", False)
    served = demo.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD, show_error=False,
                         prevent_thread_lock=True, **launch_kw)
    started(explainer)
    if blocking:
        demo.block_thread()
    return served

"""The app's Field view: upload whole fields of view, see every white cell found and classified on an
overlay, the table of cells (select one for its crop, top 3 and Grad-CAM), and the differential with its
95% intervals and advisories; the CSVs, JSON and overlays download as ``marrowscope count`` writes them.

The detector is the bundled model folder's (an adapted session model classifies, the bundled detector
finds). Each count's files live in one folder owned by the session's state, like a batch's.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import gradio as gr

from marrowscope.apps.views import cell_advice, scratch_dir
from marrowscope.core.classes import display_name
from marrowscope.core.count import cell_window, count_fields, training_scale
from marrowscope.core.detect import MAX_FIELD_PIXELS, Box, load_detector
from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.images import IMAGE_EXTENSIONS, decode_image
from marrowscope.core.uploads import expand_uploads

CELL_HEADERS = ["field", "cell", "call", "probability", "decision", "counted", "note"]
COUNT_HEADERS = ["cell type", "cells", "percent", "95% interval", "of"]


def drop_count(state: Optional[dict]) -> None:
    if state and state.get("dir"):
        shutil.rmtree(state["dir"], ignore_errors=True)


def count_view(predictor, detector, files: Optional[list], state: Optional[dict], pixel_size: Optional[float],
               target: int):
    """Fields (or zips of them) -> (overlays for the gallery, differential rows, cell rows, summary, downloads,
    new state). Unreadable fields are listed in the summary; the rest are counted."""
    paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
    if not paths:
        raise gr.Error("Upload one or more field images, or a zip of them.")
    drop_count(state)
    work = scratch_dir("count")
    uploads = expand_uploads(paths, work / "fields")
    try:
        count = count_fields(predictor, detector, uploads.files, uploads.names, uploads.problems,
                             target=int(target or 200), pixel_size=pixel_size or None)
        summary = count.write(work / "out", predictor)
    except MarrowscopeError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise gr.Error(str(exc)) from None
    out = work / "out"
    gallery = [(str(out / "overlays" / png), f.source) for f, png in
               zip(count.fields, _overlay_files(count, out)) if png]
    rows, cells = [], []
    for f, c in count.cells:
        p = c.prediction
        rows.append([Path(f.source).name, c.number, display_name(p.call) if p else "", round(p.probability, 3) if p
                     else "", p.decision if p else "", "yes" if c.counted else "no", c.note])
        cells.append({"path": str(f.path), "box": [c.box.x0, c.box.y0, c.box.x1, c.box.y1],
                      "um": f.scale.pixel_size_um, "whole": "single-cell crop" in c.note})
    diff = [[display_name(r["class"]), r["cells"], r["percent"], f"{r['low']:.1f}-{r['high']:.1f}", r["of"]]
            for r in summary["differential"]]
    text = (f"**{summary['cells_counted']} cell(s) counted** in {summary['fields']} field(s) "
            f"({summary['cells_detected']} found by the {detector.name} detector; "
            f"{summary['cells_not_counted_edge']} cut by an edge are listed, not counted; "
            f"{summary['cells_for_review']} for review). Percentages are of the {summary['identifiable_cells']} "
            "identifiable cells.")
    if summary["advisories"]:
        text += "\n\n**Advisories:**\n" + "\n".join(f"- {a}" for a in summary["advisories"])
    no_cells = [f.source for f in count.fields if f.problem is None and not f.cells]
    if no_cells:
        text += f"\n\n{len(no_cells)} field(s) without a white cell: " + ", ".join(Path(s).name for s in no_cells)
    if summary["unreadable"]:
        text += f"\n\n**{len(summary['unreadable'])} problem(s):**\n" + "\n".join(
            f"- {Path(u['field']).name}: {u['reason']}" for u in summary["unreadable"])
    overlays_zip = shutil.make_archive(str(work / "overlays"), "zip", out / "overlays")
    downloads = [str(out / "cells.csv"), str(out / "count.csv"), str(out / "count.json"), overlays_zip]
    return gallery, diff, rows, text, downloads, {"dir": str(work), "cells": cells}


def _overlay_files(count, out: Path) -> list[Optional[str]]:
    from marrowscope.core.count import overlay_names

    names = overlay_names([f.source for f in count.fields])
    return [n if f.problem is None and (out / "overlays" / n).is_file() else None for f, n in zip(count.fields, names)]


def cell_view(predictor, explainer, state: Optional[dict], evt: gr.SelectData):
    """A selected row of the cells table -> (its crop with Grad-CAM, or the crop alone; its top 3; advice)."""
    cells = (state or {}).get("cells") or []
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    if not cells or row is None or row >= len(cells):
        raise gr.Error("Count some fields first, then select a cell in the table.")
    cell = cells[row]
    try:
        image = decode_image(cell["path"], max_pixels=MAX_FIELD_PIXELS)
    except (MarrowscopeError, FileNotFoundError):
        raise gr.Error("This count's files have expired; count the fields again.") from None
    if not cell["whole"]:
        side = training_scale(predictor)[1] / cell["um"]
        image = cell_window(image, Box(*cell["box"], 1.0), side)
    pred = predictor.predict_one(image, cell["um"])
    call = predictor.classes.index(pred.call)
    try:
        shown = explainer.overlay(image, call, pixel_size=cell["um"]) if explainer else image
    except MarrowscopeError:
        shown = image
    top = {display_name(c): v for c, v in pred.top_k(predictor.classes, 3)}
    return shown, top, cell_advice(predictor.policy, predictor.classes, pred)


def field_tab(models, model_state, pixel_size: Optional[float]) -> None:
    """The Field count tab; ``models``: the session models (:class:`~marrowscope.apps.app_models.SessionModels`)."""
    bundled = models.default[0]
    detector = load_detector(bundled.model_dir)
    state = gr.State({}, time_to_live=3600, delete_callback=drop_count)
    gr.Markdown(f"Whole fields of view: every white cell is found ({detector.name} detector), classified, and "
                "counted. Cells cut by the frame's edge are listed but not counted.")
    with gr.Row():
        files = gr.File(file_count="multiple", label="Field images or a zip of them",
                        file_types=[*IMAGE_EXTENSIONS, ".zip"], elem_id="field-files")
        with gr.Column():
            pixel = gr.Number(value=pixel_size or 0, minimum=0, label="Pixel size in µm (0: estimate from red cells)")
            target = gr.Radio([200, 500], value=200, label="Target cells (200 blood, 500 marrow)")
            go = gr.Button("Count", variant="primary")
    gallery = gr.Gallery(label="Overlays: numbered boxes in each class's colour", columns=2, height="auto",
                         elem_id="field-overlays")
    note = gr.Markdown()
    diff = gr.Dataframe(headers=COUNT_HEADERS, label="Differential with 95% intervals (Wilson)")
    with gr.Row():
        table = gr.Dataframe(headers=CELL_HEADERS, label="Cells (select one to see it)", wrap=True)
        with gr.Column():
            crop = gr.Image(label="The selected cell, with Grad-CAM", interactive=False)
            top3 = gr.Label(num_top_classes=3, label="Top 3")
            advice = gr.Markdown()
    downloads = gr.File(label="cells.csv, count.csv, count.json, overlays", interactive=False)

    def run(f, s, um, t, ms):
        return count_view(models.get(ms)[0], detector, f, s, um, t)

    def show(s, ms, evt: gr.SelectData):
        return cell_view(*models.get(ms), s, evt)

    go.click(run, [files, state, pixel, target, model_state], [gallery, diff, table, note, downloads, state],
             api_name="count")
    table.select(show, [state, model_state], [crop, top3, advice])

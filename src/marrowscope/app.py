"""The Gradio app: classify one cell, count a batch, review labels, and see the model and its data.

``build_demo(predictor)`` returns the ``gr.Blocks``; ``marrowscope app`` and the Space's
``app.py`` launch it. Handlers are plain functions of their inputs (tested without a browser);
library errors become ``gr.Error`` sentences, never tracebacks.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

import gradio as gr

from marrowscope.classes import FULL_NAMES, display_name
from marrowscope.data import Sample, count_table, manifest_rows, split_samples
from marrowscope.errors import MarrowscopeError
from marrowscope.images import IMAGE_EXTENSIONS
from marrowscope.predict import Predictor
from marrowscope.report import BatchResult

MAX_UPLOAD = "15mb"             # per file, enforced by Gradio before a handler runs
MAX_BATCH_FILES = 2000          # images per batch (zip members included)
MAX_ZIP_BYTES = 500 * 2**20     # uncompressed bytes read from one zip
REVIEW_BELOW = 0.6


class CellImage(gr.Image):
    """``gr.Image`` that hands the uploaded file to marrowscope's decoder unopened, so that a
    corrupt or odd upload gets marrowscope's sentence rather than Gradio's own PIL error.
    ``is_template`` makes Gradio draw it with the ordinary Image front end."""

    is_template = True

    def preprocess(self, payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return super().preprocess(payload)


# ---------------------------------------------------------------- classify
def classify(predictor: Predictor, explainer, image_path: Optional[str], review_below: float = REVIEW_BELOW):
    """One image -> ({display name: probability} of the top 3, Grad-CAM overlay or None, advice)."""
    if not image_path:
        raise gr.Error("Upload, paste or drop a cell image first.")
    try:
        probs = predictor.predict(image_path)
        top = list(probs.items())[:3]
        overlay = explainer.overlay(image_path, predictor.classes.index(top[0][0])) if explainer else None
    except MarrowscopeError as exc:
        raise gr.Error(_tidy(str(exc), image_path)) from None
    label, p = top[0]
    if p < review_below:
        advice = (f"**Review by a person:** the model is unsure (top probability {p:.0%} is below "
                  f"{review_below:.0%}). Its best guess is {display_name(label)}.")
    else:
        advice = f"Most likely **{display_name(label)}** ({p:.0%})."
    return {display_name(c): v for c, v in top}, overlay, advice


def _tidy(message: str, path) -> str:
    """Show the user's file name, not the server's temporary path."""
    return message.replace(f"'{path}'", f"'{Path(path).name}'") if isinstance(path, (str, Path)) else message


# ---------------------------------------------------------------- batch
def _expand_uploads(paths: list[str]) -> tuple[list, list[str], list[str]]:
    """Uploaded files and zips -> (sources, names, problems). Zip members are read into memory by
    name only, so a zip cannot write outside the app's folders (no extraction)."""
    sources, names, problems = [], [], []
    for p in paths:
        path = Path(p)
        if path.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(path) as zf:
                    budget = MAX_ZIP_BYTES
                    for info in zf.infolist():
                        if info.is_dir() or Path(info.filename).suffix.lower() not in IMAGE_EXTENSIONS \
                                or Path(info.filename).name.startswith("."):
                            continue
                        if info.file_size > budget or len(sources) >= MAX_BATCH_FILES:
                            problems.append(f"{path.name}: stopped reading at {info.filename} (size or count limit)")
                            break
                        budget -= info.file_size
                        sources.append(zf.read(info))
                        names.append(f"{path.name}/{info.filename}")
            except (zipfile.BadZipFile, OSError) as exc:
                problems.append(f"{path.name}: not a readable zip ({exc})")
        else:
            sources.append(path)
            names.append(path.name)
    if len(sources) > MAX_BATCH_FILES:
        problems.append(f"only the first {MAX_BATCH_FILES} of {len(sources)} images were classified")
        sources, names = sources[:MAX_BATCH_FILES], names[:MAX_BATCH_FILES]
    return sources, names, problems


def batch(predictor: Predictor, files: Optional[list], review_below: float = REVIEW_BELOW):
    """Many images (or zips) -> per-image table, differential count table and chart, CSV, notes, state."""
    paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
    if not paths:
        raise gr.Error("Upload one or more cell images, or a zip of them.")
    sources, names, problems = _expand_uploads(paths)
    result = BatchResult(list(predictor.classes), 3, review_below)
    for pred, src in zip(predictor.predict_many(sources, names=names), sources):
        if pred.error:
            pred.error = _tidy(pred.error, src)
        result.add(pred)
    out_dir = Path(tempfile.mkdtemp(prefix="marrowscope-batch-"))
    csv_path, counts_path = result.write(out_dir / "predictions.csv")
    rows = [[r["file"], display_name(r["predicted"]) if r["predicted"] else "unreadable",
             r["probability"], _top3_text(r), r["review"]] for r in result.rows]
    counts = [[display_name(c["class"]), c["cells"], c["percent"]] for c in result.counts]
    errors = [f"- {r['file']}: {r['error']}" for r in result.errors] + [f"- {p}" for p in problems]
    ok = len(result.rows) - len(result.errors)
    note = f"Classified {ok} cell(s); {sum(1 for r in result.rows if r['review'])} flagged for review."
    if errors:
        note += f"\n\n**{len(errors)} problem(s):**\n" + "\n".join(errors)
    review_rows = [[r["file"], r["predicted"], r["probability"], r["predicted"]] for r in result.rows
                   if r["status"] == "ok"]
    state = {"items": [(n, s) for n, s, r in zip(names, sources, result.rows) if r["status"] == "ok"]}
    return rows, counts, _count_figure(result.counts), [str(csv_path), str(counts_path)], note, review_rows, state


def _top3_text(row: dict) -> str:
    return ", ".join(f"{row[f'top{i}']} {row[f'p{i}']:.2f}" for i in (1, 2, 3) if row.get(f"top{i}"))


def _count_figure(counts: list[dict]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.bar([c["class"] for c in counts], [c["percent"] for c in counts], color="#4c72b0")
    ax.bar_label(bars, labels=[f"{c['cells']}" for c in counts])
    ax.set_ylabel("% of classified cells")
    ax.set_title("differential count")
    fig.tight_layout()
    plt.close(fig)
    return fig


# ---------------------------------------------------------------- review
def export_review(classes: list[str], review_rows, state: Optional[dict]):
    """Confirmed/corrected labels -> a zip with a class-folder tree and a manifest CSV beside it;
    both are accepted by ``marrowscope train`` once unzipped."""
    items = dict((state or {}).get("items", []))
    if not items:
        raise gr.Error("Classify a batch first; its cells appear here for review.")
    rows = review_rows.values.tolist() if hasattr(review_rows, "values") else list(review_rows or [])
    out_dir = Path(tempfile.mkdtemp(prefix="marrowscope-review-"))
    tree = out_dir / "reviewed"
    samples, bad = [], []
    for k, row in enumerate(rows):
        name, label = str(row[0]), str(row[3]).strip().upper()
        if label not in classes:
            bad.append(f"{name}: '{row[3]}' is not one of {', '.join(classes)}")
            continue
        src = items.get(name)
        if src is None:
            continue
        target = tree / label / f"{k:05d}_{Path(name).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, bytes):
            target.write_bytes(src)
        else:
            shutil.copyfile(src, target)
        samples.append(Sample(target, label))
    if bad:
        raise gr.Error("Fix these labels first: " + "; ".join(bad[:5]))
    split_samples(samples, val=0.15, test=0.15, seed=0)
    with open(tree / "labels.csv", "w", newline="") as fh:  # no root line: paths are relative to the CSV
        w = csv.writer(fh)
        w.writerow(["path", "label", "split", "sha256"])
        for s in samples:
            w.writerow([s.path.relative_to(tree).as_posix(), s.label, s.split, s.sha256])
    archive = shutil.make_archive(str(out_dir / "reviewed"), "zip", tree)
    return [archive, str(tree / "labels.csv")], f"Exported {len(samples)} reviewed cell(s)."


# ---------------------------------------------------------------- model and data views
def model_views(model_dir: Path) -> dict:
    """What the Model tab shows, read from the model folder (missing parts say so)."""
    view = {"curves": None, "confusion": None, "metrics_rows": [], "metrics_note": "", "card": ""}
    if (model_dir / "curves.png").is_file():
        view["curves"] = str(model_dir / "curves.png")
    report = model_dir / "test_report"
    if (report / "metrics.json").is_file():
        m = json.loads((report / "metrics.json").read_text())
        view["metrics_rows"] = [[display_name(c), round(r["precision"], 3), round(r["recall"], 3), round(r["f1"], 3),
                                 r["support"]] for c, r in m["per_class"].items()]
        view["metrics_note"] = (f"On {m['images']} images of the **{m['split']}** split (never used in training "
                                f"or model choice): accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}, "
                                f"expected calibration error {m['ece']:.3f}.")
        if (report / "confusion_matrix.png").is_file():
            view["confusion"] = str(report / "confusion_matrix.png")
    else:
        view["metrics_note"] = "This model folder has no test report (run `marrowscope evaluate`)."
    card = model_dir / "MODEL_CARD.md"
    view["card"] = card.read_text() if card.is_file() else "This model folder has no MODEL_CARD.md."
    return view


def data_views(model_dir: Path, classes: list[str]):
    """Class distribution of the data the model was trained on, per split, from its manifest."""
    manifest = model_dir / "manifest.csv"
    if not manifest.is_file():
        return None, [], "This model folder has no manifest.csv, so its training data cannot be shown."
    samples = [Sample(Path(r["path"]), r["label"], r["split"]) for r in manifest_rows(manifest)[1]]
    table = count_table(samples, classes)
    from marrowscope.plots import distribution_figure

    fig = distribution_figure({c: r["total"] for c, r in table.items()}, f"images per class ({len(samples)})")
    import matplotlib.pyplot as plt

    plt.close(fig)
    rows = [[display_name(c), r["train"], r["val"], r["test"], r["total"]] for c, r in table.items()]
    return fig, rows, f"{len(samples)} images from `{manifest.name}` of the model folder."


def example_images(examples_dir: Optional[Path], classes: list[str], per_class: int = 1) -> list[str]:
    """A few images per class copied to a temporary folder (Gradio serves only its own folders)."""
    if not examples_dir or not Path(examples_dir).is_dir():
        return []
    out = Path(tempfile.mkdtemp(prefix="marrowscope-examples-"))
    picked = []
    for c in classes:
        files = sorted(f for f in (Path(examples_dir) / c).rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        for f in files[-per_class:]:
            picked.append(str(shutil.copy(f, out / f.name)))
    return picked


# ---------------------------------------------------------------- layout
def build_demo(predictor: Predictor, *, explainer=None, examples_dir: Optional[Path] = None,
               review_below: float = REVIEW_BELOW) -> gr.Blocks:
    """The app for one loaded model (the model is loaded once, not per request)."""
    classes = list(predictor.classes)
    model_dir = predictor.model_dir
    mv = model_views(model_dir)
    fig, data_rows, data_note = data_views(model_dir, classes)
    title = f"marrowscope: bone-marrow cell classifier ({predictor.info.architecture}, {len(classes)} classes)"
    with gr.Blocks(title="marrowscope") as demo:
        gr.Markdown(f"# {title}\nFor research and education; not a medical device. Classes: " +
                    ", ".join(f"{c} {FULL_NAMES.get(c, '')}".strip() for c in classes) + ".")
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    image = CellImage(type="filepath", label="Cell image (upload, paste or drop)",
                                     sources=["upload", "clipboard"], image_mode=None)
                    go = gr.Button("Classify", variant="primary")
                with gr.Column():
                    label = gr.Label(num_top_classes=3, label="Top 3 cell types")
                    advice = gr.Markdown()
                    cam = gr.Image(label="Grad-CAM: where the model looked", interactive=False)
            examples = example_images(examples_dir, classes)
            if examples:
                gr.Examples(examples, inputs=image, label="Examples, one per class")
            go.click(lambda p: classify(predictor, explainer, p, review_below), image, [label, cam, advice],
                     api_name="classify")
        with gr.Tab("Batch / differential count"):
            files = gr.File(file_count="multiple", label="Cell images or a zip of them",
                            file_types=[*IMAGE_EXTENSIONS, ".zip"])
            run = gr.Button("Classify all", variant="primary")
            note = gr.Markdown()
            with gr.Row():
                counts = gr.Dataframe(headers=["cell type", "cells", "percent"], label="Differential count")
                chart = gr.Plot(label="Differential count")
            table = gr.Dataframe(headers=["file", "predicted", "probability", "top 3", "review"],
                                 label="Per image", wrap=True)
            downloads = gr.File(label="CSV downloads", interactive=False)
        with gr.Tab("Review"):
            gr.Markdown("Confirm or correct each cell's label (edit the **label** column with a class code: "
                        f"{', '.join(classes)}), then export a training set for `marrowscope train`.")
            review = gr.Dataframe(headers=["file", "predicted", "probability", "label"], interactive=True,
                                  label="Cells of the last batch")
            export = gr.Button("Export reviewed labels")
            export_note = gr.Markdown()
            exported = gr.File(label="reviewed.zip (class folders + labels.csv)", interactive=False)
        state = gr.State({})
        run.click(lambda f: batch(predictor, f, review_below), files,
                  [table, counts, chart, downloads, note, review, state], api_name="batch")
        export.click(lambda r, s: export_review(classes, r, s), [review, state], [exported, export_note],
                     api_name="export_review")
        with gr.Tab("Model"):
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
        with gr.Tab("Data"):
            gr.Markdown(data_note)
            if fig is not None:
                gr.Plot(fig, label="Class distribution")
                gr.Dataframe(value=data_rows, headers=["cell type", "train", "val", "test", "total"])
    return demo


def launch(model: Optional[str] = None, host: str = "127.0.0.1", port: int = 7860,
           examples_dir: Optional[str] = None, explain: bool = True, **launch_kw):
    """Load the model once and serve the app (127.0.0.1 unless told otherwise)."""
    from marrowscope.data import default_data_dir

    predictor = Predictor(model)
    explainer = None
    if explain:
        from marrowscope.explain import Explainer

        explainer = Explainer(predictor.model_dir)
    examples = Path(examples_dir) if examples_dir else default_data_dir()
    demo = build_demo(predictor, explainer=explainer, examples_dir=examples)
    demo.queue(default_concurrency_limit=4)
    return demo.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD, show_error=False,
                       **launch_kw)

"""What the app shows of a model folder: its test report, card, curves and training data."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from marrowscope.core.classes import display_name
from marrowscope.core.data import Sample, count_table
from marrowscope.core.images import is_image_path
from marrowscope.core.manifest import manifest_rows


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
    view["card"] = _without_front_matter(card.read_text()) if card.is_file() else \
        "This model folder has no MODEL_CARD.md."
    return view


def _without_front_matter(text: str) -> str:
    """A model card as a person reads it: the Hugging Face metadata block at its top is for the Hub."""
    if text.startswith("---\n") and "\n---\n" in text[4:]:
        return text[4:].split("\n---\n", 1)[1].lstrip()
    return text


def data_views(model_dir: Path, classes: list[str]):
    """Class distribution of the data the model was trained on, per split, from its manifest."""
    from marrowscope.report.plots import distribution_figure

    manifest = model_dir / "manifest.csv"
    if not manifest.is_file():
        return None, [], "This model folder has no manifest.csv, so its training data cannot be shown."
    samples = [Sample(Path(r["path"]), r["label"], r["split"]) for r in manifest_rows(manifest)]
    table = count_table(samples, classes)
    fig = distribution_figure({c: r["total"] for c, r in table.items()}, f"images per class ({len(samples)})")
    rows = [[display_name(c), r["train"], r["val"], r["test"], r["total"]] for c, r in table.items()]
    return fig, rows, f"{len(samples)} images from `{manifest.name}` of the model folder."


def example_images(examples_dir: Optional[Path], classes: list[str], out: Path, per_class: int = 1) -> list[str]:
    """A few images per class copied into ``out`` (Gradio serves only its own folders)."""
    if not examples_dir or not Path(examples_dir).is_dir():
        return []
    picked = []
    for c in classes:
        files = sorted(f for f in (Path(examples_dir) / c).rglob("*") if f.is_file() and is_image_path(f))
        for f in files[-per_class:]:
            picked.append(str(shutil.copy(f, out / f.name)))
    return picked


def scratch_dir(prefix: str) -> Path:
    """A new temporary folder for the app's files; its owner removes it."""
    return Path(tempfile.mkdtemp(prefix=f"marrowscope-{prefix}-"))


def cell_advice(policy, classes, pred) -> str:
    """A :class:`~marrowscope.core.predict.Prediction`'s call, decision and prediction set in sentences;
    ``policy``: the review policy that decided them (for its thresholds)."""
    text = _decision_text(policy, classes, pred)
    pset = pred.set
    if pset:
        cover = f" (holds the type of {policy.set_coverage:.0%} of cells like those it was fitted on)" \
            if policy.set_coverage else ""
        text += f"\n\nPrediction set{cover}: {' or '.join(display_name(c) for c in pset)}."
    return text


def _decision_text(policy, classes, pred) -> str:
    decision, label, p, probs = pred.decision, pred.call, pred.probability, pred.probs
    top = pred.top_k(classes, 1)[0]
    if label != top[0]:  # only the blast weight makes the call differ from the most probable class
        return (f"**Called a blast: review by a person.** Blast {p:.0%} against {display_name(top[0])} {top[1]:.0%}: "
                f"a missed blast costs most, so a cell is called a blast from 1/{policy.blast_weight:.2f} of the "
                "leading probability.")
    if decision == "possible-blast":
        p_blast = float(probs[list(classes).index("BLA")])
        return (f"**Possible blast: review by a person.** Predicted {display_name(label)} ({p:.0%}), but the "
                f"blast probability ({p_blast:.0%}) is too high to rule a blast out.")
    if decision == "review" and pred.unusual and p >= policy.accept_threshold:
        return (f"**Review by a person:** this image looks unlike the images the model learnt from, and no cell "
                f"of such an image is accepted, however sure the model is (here {p:.0%}): its accuracy was "
                f"measured on cells like its training cells. Its best guess is {display_name(label)}.")
    if decision == "review":
        return (f"**Review by a person:** the model is not sure enough to accept this cell (top probability {p:.0%}, "
                f"accepted from {policy.accept_threshold:.0%}). Its best guess is {display_name(label)}.")
    return f"Most likely **{display_name(label)}** ({p:.0%}): accepted."

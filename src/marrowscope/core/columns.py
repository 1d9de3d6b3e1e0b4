"""The columns of ``marrowscope predict``'s CSV in plain words: one place for ``predict --help``, the
README and :func:`marrowscope.classify`'s rows. Light on purpose: ``--help`` reads it without loading
the inference stack."""

from __future__ import annotations

import textwrap

# One line per column of predict's CSV, in plain words: `predict --help` and the README show them.
COLUMNS = {
    "file": "the image as given (a zip's member as ZIP/MEMBER)",
    "status": "ok, or error when the file could not be read (then only file, status and error are filled)",
    "predicted": "the call: the most probable cell type, except that a blast is called once its probability "
                 "reaches 1/blast-weight of the leading one (in images like the training images: a missed blast "
                 "costs most)",
    "probability": "the calibrated probability (0-1) of the call",
    "topN, pN": "the N-th most probable cell type and its probability (N = 1 to --top-k)",
    "decision": "accepted: the call is as reliable as the model folder promises for accepted cells (the "
                "bundled model: at least 97% right), so it may be counted without a second look; never for an "
                "unusual image, where that promise does not hold; review: a person should look; possible-blast: "
                "not called a blast, but a blast cannot be ruled out, a person must look",
    "set": "the prediction set: the cell types that together hold the true one for 95% of cells like the "
           "training cells, most probable first, |-separated; empty for an unusual image (the 95% does not hold "
           "there) or a model folder without sets",
    "domain_score": "how unlike the training images the image is (about 1 for images like them); empty without "
                    "a domain check",
    "unusual": "yes when domain_score is above the model folder's cut-off (printed with the warning): results "
               "may be wrong, the image is read twice and gets no set; empty without a domain check",
    "network": "only for a folder made by `adapt` from labelled cells: home where the model it was adapted from "
               "found the image like its own training images and its whole prediction was kept (domain_score and "
               "unusual are then that model's), lab where the adapted network's was used; empty otherwise",
    "scale": "the pixel size the image was read at, and where it came from (its red cells, --pixel-size, or "
             "assumed equal to the training images')",
    "focus_blur_px": "the blur (px) given to an image crisper than the training images before classifying "
                     "(0: left as it was); empty where the model folder has no focus settings",
    "error": "why the file could not be read; empty otherwise",
}
COUNT_KINDS = ("all cells", "accepted cells", "decision")


def columns_help() -> str:
    """The CSV's columns, one line each, for ``predict --help``."""
    lines = (textwrap.fill(f"{name}: {text}", 100, initial_indent="  ", subsequent_indent="      ")
             for name, text in COLUMNS.items())
    return "columns of the CSV:\n" + "\n".join(lines)

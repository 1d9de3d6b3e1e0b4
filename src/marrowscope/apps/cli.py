"""The ``marrowscope`` command: each subcommand parses flags and makes one library call.

Every subcommand that uses a model takes it as ``--model DIR`` (default: the bundled model) and
its data positionally; the older ``evaluate MODEL DATA`` form still works, with a deprecation line.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from marrowscope.apps.cli_args import (
    Deprecated,
    classes_arg,
    data_flags,
    inference_flags,
    launch_flags,
    launch_settings,
    model_then_data,
    train_flags,
)
from marrowscope.apps.cli_count import add_count, add_train_detector
from marrowscope.apps.cli_serve import add_app, add_export_onnx, add_export_space
from marrowscope.apps.cli_tools import add_average_weights, add_choose_second_zoom, add_fit_checks
from marrowscope.core.classes import CLASSES
from marrowscope.core.config import REVIEW_BELOW, TEST_FRACTION, VAL_FRACTION, TrainConfig
from marrowscope.core.errors import MarrowscopeError


# ---------------------------------------------------------------- prepare, stats
def _add_prepare(sub) -> None:
    s = sub.add_parser("prepare", help="sample, split and write a manifest CSV")
    s.add_argument("src", help="folder with one sub-folder per class (flat or nested)")
    s.add_argument("--out", required=True, help="manifest CSV to write (paths relative to its folder)")
    s.add_argument("--classes", type=classes_arg, default=CLASSES)
    s.add_argument("--per-class", type=int, default=None, help="sample at most N images per class (seeded)")
    s.add_argument("--val", type=float, default=VAL_FRACTION)
    s.add_argument("--test", type=float, default=TEST_FRACTION)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--shards", default=None, help="also pack the images into LitData shards in this folder "
                   "(one per split); `train DIR` streams them")
    s.add_argument("--workers", type=int, default=1, help="processes packing the shards")
    s.set_defaults(func=cmd_prepare)


def cmd_prepare(a) -> None:
    from marrowscope.core.data import count_table, duplicate_groups, format_skipped, format_table, prepare
    from marrowscope.core.manifest import write_manifest

    samples, skipped = prepare(a.src, a.classes, a.per_class, a.val, a.test, a.seed)
    write_manifest(samples, a.out)
    if skipped:
        print(format_skipped(skipped), file=sys.stderr)
    print(format_table(count_table(samples, a.classes)))
    print(f"{len(samples)} images, {duplicate_groups(samples)} in byte-identical groups (kept in one split); "
          f"manifest: {a.out}")
    if a.shards:
        from marrowscope.fit.shards import write_shards

        meta = write_shards(samples, a.classes, a.shards, a.workers)
        print(f"shards: {a.shards} ({meta['images']})")


def _add_stats(sub) -> None:
    s = sub.add_parser("stats", help="class distribution: table, bar and pie charts")
    data_flags(s)
    s.add_argument("--out", required=True)
    s.add_argument("--classes", type=classes_arg, default=None)
    s.set_defaults(func=cmd_stats)


def cmd_stats(a) -> None:
    import json

    from marrowscope.core.data import count_table, data_or_default, format_skipped, format_table, load_samples
    from marrowscope.report.plots import plot_distribution

    samples, skipped = load_samples(data_or_default(a.data), a.classes, seed=a.seed, data_root=a.data_root)
    table = count_table(samples, a.classes or sorted({s.label for s in samples}))
    if skipped:
        print(format_skipped(skipped), file=sys.stderr)
    print(format_table(table))
    out = Path(a.out)
    paths = plot_distribution({c: r["total"] for c, r in table.items()}, out, f"images per class ({len(samples)})")
    (out / "counts.json").write_text(json.dumps(table, indent=2))
    print("wrote " + ", ".join(str(p) for p in [*paths, out / "counts.json"]))


# ---------------------------------------------------------------- train
def _add_train(sub) -> None:
    s = sub.add_parser("train", help="train a timm classifier with PyTorch Lightning")
    s.add_argument("data", nargs="?", help="class-folder tree or manifest CSV")
    s.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    train_flags(s)
    s.set_defaults(func=cmd_train)


def _train_config(a) -> TrainConfig:
    from marrowscope.core.data import data_or_default

    cfg = TrainConfig(**{f.name: getattr(a, f.name) for f in fields(TrainConfig)
                         if getattr(a, f.name, None) is not None})
    cfg.data = str(data_or_default(a.data))
    return cfg


def cmd_train(a) -> None:
    from marrowscope.fit.train import fit

    fit(_train_config(a))


def _add_cv(sub) -> None:
    s = sub.add_parser("cv", help="k-fold cross-validation: mean and sd, out-of-fold predictions, the fold "
                       "ensemble on the test split")
    s.add_argument("data", nargs="?", help="manifest CSV or class-folder tree (its test split stays out)")
    s.add_argument("--out", required=True, help="cross-validation folder, e.g. runs/cv")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--fold", type=int, default=None,
                   help="train this fold only (folds in parallel); a later run without it reuses the fold models")
    train_flags(s)
    s.set_defaults(func=cmd_cv)


def cmd_cv(a) -> None:
    from marrowscope.fit.cv import cross_validate

    if a.fold is not None and not 0 <= a.fold < a.folds:
        raise MarrowscopeError(f"--fold {a.fold} is not one of the {a.folds} folds (0-{a.folds - 1}).")
    summary = cross_validate(_train_config(a), a.folds, a.fold)
    if summary:
        print(json.dumps({k: summary[k] for k in ("mean_sd", "pooled", "test_ensemble") if k in summary}, indent=2))
        print(f"written: {Path(a.out) / 'cv.json'}, oof.csv, oof.npz", file=sys.stderr)


# ---------------------------------------------------------------- evaluate, calibrate, predict
CHECK_YOUR_LAB = """check the model on your lab before you rely on it:
  put some of your labelled cells in class folders (BLA/, LYT/, ...: any subset of the classes) and run
    marrowscope evaluate FOLDER --split all --out my-lab-report
  then read, in the printed report: accuracy and macro-F1; the unusual share (images unlike the
  training images); the accepted share and the accepted cells' accuracy; blasts predicted BLA or flagged.
  adapt first (marrowscope adapt) when the accepted cells are under 95% correct, accuracy is under 0.85,
  or most images are unusual: the model's promises were measured on cells like its training cells."""


def review_below_flag(s) -> None:
    s.add_argument("--review-below", type=float, default=None, metavar="P",
                   help="accept no cell whose call's probability is below P: on top of the model folder's fitted "
                        f"policy, which it can only make stricter (default: the folder's policy; {REVIEW_BELOW} "
                        "for a folder without one)")


def checked_review_below(a) -> None:
    if a.review_below is not None and not 0 <= a.review_below <= 1:
        raise MarrowscopeError(f"--review-below is a probability between 0 and 1, not {a.review_below}.")


def _add_evaluate(sub) -> None:
    from marrowscope.core.data import SPLIT_CHOICES

    s = sub.add_parser("evaluate", help="metrics on a split the model never trained on, or on your lab's own cells",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=CHECK_YOUR_LAB)
    data_flags(s, "*")  # "*": the deprecated MODEL DATA form
    s.add_argument("--split", default="test", choices=SPLIT_CHOICES)
    s.add_argument("--out", required=True)
    s.add_argument("--resume", action="store_true", help="finish an interrupted run from OUT/predictions.csv.partial")
    review_below_flag(s)
    inference_flags(s)
    launch_flags(s)
    s.set_defaults(func=cmd_evaluate)


def cmd_evaluate(a) -> None:
    from marrowscope.core.data import data_or_default
    from marrowscope.core.predict import Predictor
    from marrowscope.report.evaluate import evaluate, format_report

    model_then_data(a)
    checked_review_below(a)
    predictor = Predictor(a.model, backend=a.backend, tta=a.tta, pixel_size=a.pixel_size, review_below=a.review_below)
    m = evaluate(predictor, data_or_default(a.data), a.split, a.out, seed=a.seed, data_root=a.data_root,
                 launch=launch_settings(a), resume=a.resume)
    if m is None:  # a DDP rank other than 0: rank 0 reports
        return
    print(format_report(m, predictor.classes))
    for u in m["unreadable"]:
        print(f"skipped {u['path']}: {u['reason']}", file=sys.stderr)
    print(f"wrote {a.out}/metrics.json, confusion_matrix.png, reliability.png, predictions.csv")


def _add_calibrate(sub) -> None:
    from marrowscope.core.data import SPLITS

    s = sub.add_parser("calibrate", help="fit softmax temperatures and the review policy (with and without TTA) on "
                       "validation images or on cross-validation's out-of-fold predictions")
    data_flags(s, "*")
    s.add_argument("--split", default="val", choices=[sp for sp in SPLITS if sp != "test"])
    s.add_argument("--oof", default=None, help="fit on the oof.npz of `marrowscope cv` (predictions of the same "
                   "recipe on images each fold model never saw) instead of a split")
    s.add_argument("--blast-recall", type=float, default=0.85, help="share of blasts to be predicted BLA: P(BLA) is "
                   "weighed up until they are (default %(default)s; 0: the most probable class, unweighed)")
    s.add_argument("--blast-catch", type=float, default=0.97,
                   help="share of blasts to be predicted BLA or flagged possible-blast (default %(default)s)")
    s.add_argument("--accept-accuracy", type=float, default=0.97,
                   help="accuracy the accepted cells must reach (default %(default)s)")
    s.add_argument("--delta", type=float, default=0.1, help="allowed chance that the accuracy guarantee fails")
    s.add_argument("--set-coverage", type=float, default=0.95,
                   help="share of cells whose prediction set holds their true class (default %(default)s)")
    inference_flags(s)
    s.set_defaults(func=cmd_calibrate)  # --tta/--no-tta given here also becomes the folder's default


def cmd_calibrate(a) -> None:
    from marrowscope.core.data import data_or_default
    from marrowscope.core.policy import Policy
    from marrowscope.fit.calibrate import calibrate

    model_then_data(a)
    for name in ("blast_catch", "accept_accuracy", "delta", "set_coverage"):
        if not 0 < getattr(a, name) < 1:
            raise MarrowscopeError(f"--{name.replace('_', '-')} must be a fraction between 0 and 1.")
    if not 0 <= a.blast_recall < 1:
        raise MarrowscopeError("--blast-recall must be a fraction from 0 (no blast weight) up to 1.")
    from marrowscope.core.predict import Predictor

    predictor = Predictor(a.model, backend=a.backend, pixel_size=a.pixel_size)
    r = calibrate(predictor, None if a.oof else data_or_default(a.data), a.split, seed=a.seed,
                  data_root=a.data_root, tta=a.tta, oof=a.oof, catch=a.blast_catch, accuracy=a.accept_accuracy,
                  delta=a.delta, recall=a.blast_recall, coverage=a.set_coverage)
    for key, label in (("tta", "with TTA"), ("no_tta", "without TTA")):
        f = r[key]
        print(f"{label}: temperature {f['temperature']:.3f}, expected calibration error {f['ece_before']:.4f} -> "
              f"{f['ece_after']:.4f}; policy: {Policy.from_settings(f['policy']).describe()}")
        print(f"  on the calibration cells: {json.dumps(f['policy']['on_calibration_cells'])}")
    print(f"fitted on {r['on']}")
    for u in r["unreadable"]:
        print(f"skipped {u.source}: {u.reason}", file=sys.stderr)


def _add_predict(sub) -> None:
    from marrowscope.core.columns import columns_help

    s = sub.add_parser("predict", help="classify images and count cells per class",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=columns_help())
    s.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    s.add_argument("--out", default="predictions.csv")
    s.add_argument("--top-k", type=int, default=3)
    review_below_flag(s)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--resume", action="store_true", help="finish an interrupted run from OUT.partial (the results "
                   "it kept are not computed again)")
    inference_flags(s)
    launch_flags(s)
    s.set_defaults(func=cmd_predict)


def cmd_predict(a) -> None:
    from marrowscope.core.batch import run_batch
    from marrowscope.core.predict import Predictor

    checked_review_below(a)
    predictor = Predictor(a.model, backend=a.backend, tta=a.tta, pixel_size=a.pixel_size, review_below=a.review_below)
    result = run_batch(predictor, a.paths, a.out, top_k=a.top_k, batch_size=a.batch_size, progress=not a.quiet,
                       launch=launch_settings(a), resume=a.resume)
    if result is None:  # a DDP rank other than 0: rank 0 reports
        return
    if result.warning():
        print(result.warning(), file=sys.stderr)
    print(result.summary())
    counts = Path(a.out).with_name(Path(a.out).stem + "_counts.csv")
    print(f"wrote {a.out} (one row per image; `marrowscope predict --help` explains each column) and {counts} "
          "(the differential counts and the decisions)")


# ---------------------------------------------------------------- adapt
def _add_adapt(sub) -> None:
    s = sub.add_parser("adapt", help="fit a model to a new lab: on a few reviewed cells, or on its unlabelled cells")
    s.add_argument("data", help="class folders, labels.csv or manifest, or the app's reviewed.zip; with --unlabelled, "
                   "a folder of the lab's cell images (at least 100, no labels)")
    s.add_argument("--unlabelled", action="store_true", help="no labels: fit the lab's pixel size and the network's "
                   "normalisation statistics on its cells; the new folder never accepts a cell (docs/adaptation.md)")
    s.add_argument("--model", dest="source", default=None, help="model folder to adapt (default: the bundled model)")
    s.add_argument("--from", dest="source", action=Deprecated, new="--model", help=argparse.SUPPRESS)
    s.add_argument("--out", required=True, help="the new model folder (must not be a model folder already)")
    s.add_argument("--replay", default=None, help="class folders of the model's training images (default: its "
                   "manifest's training split, where its images are found)")
    s.add_argument("--epochs", type=int, default=None, help="passes over the cells (default 8 where the source model "
                   "has a domain check, which keeps its home lab's images, and every class has at least 20 cells; "
                   "else 4)")
    s.add_argument("--lr", type=float, default=3e-4)
    s.add_argument("--holdout", type=float, default=0.2, help="share of each class held out to measure on")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--mix", type=float, default=None, help="weight of the fine-tuned network against the source's "
                   "(default 1, the fine-tune alone, where the source model has a domain check, which keeps its home "
                   "lab's images, and every class has at least 20 cells; else 0.5, which keeps half the source; "
                   "docs/adaptation.md)")
    s.add_argument("--replay-distill", type=float, default=None, help="weight of the source model's own "
                   "probabilities in the replayed images' targets (default 0.5: keeps its blasts at home; 0: labels "
                   "only)")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--data-root", default=None, help="folder that now holds a manifest's class folders")
    s.set_defaults(func=cmd_adapt)


def adapt_report(r: dict, out: str) -> str:
    """What ``adapt`` did, in sentences: the cells it trained on and held out, the held-out accuracy with
    its interval, and what changed in the new folder besides the weights."""
    def per_class(counts: dict) -> str:
        return ", ".join(f"{c} {n}" for c, n in sorted(counts.items())) or "none"

    lines = [f"adapted {r['source']} into {out}:",
             f"  trained on {r['cells']} cells of {r['data']} ({per_class(r['per_class'])}) and {r['replayed']} of "
             "the source model's own training images (replayed so that it keeps what it knew)",
             f"  held out {r['held_out']} cells to measure on, never trained on ({per_class(r['held_out_per_class'])})"]
    if r.get("accuracy_after") is not None:
        (lo0, hi0), (lo1, hi1) = r["interval_before"], r["interval_after"]
        lines.append(f"  accuracy on the {r['held_out']} held-out cells: {r['accuracy_before']:.2f} before (95% "
                     f"interval {lo0:.2f}-{hi0:.2f}), {r['accuracy_after']:.2f} after ({lo1:.2f}-{hi1:.2f}); one cell "
                     f"is {100 / r['held_out']:.0f} points, so a change inside the intervals may be chance")
    else:
        lines.append("  no accuracy before/after: too few cells per class to hold any out (--holdout)")
    if r.get("home"):
        lines.append(f"  the source model is kept in {r['home']}/: images its own domain check finds like its training "
                     "images keep its calls, blast weight and accept rule (the predictions' network column says home)")
    if r.get("blast_weight_dropped"):
        lines.append("  the new lab's cells get no blast weight: it was fitted on the source lab's blasts; "
                     "`marrowscope calibrate` on the lab's own labelled cells (blasts among them) fits one")
    lines.append("  the adapted network's domain check was refitted on both labs' cells, so the new lab's images are "
                 "no longer unusual; cells of a lab it has not seen still are")
    return "\n".join(lines)


def cmd_adapt(a) -> None:
    if a.unlabelled:
        from marrowscope.fit.label_free import adapt_unlabelled

        r = adapt_unlabelled(a.data, a.source, a.out, seed=a.seed)
        if r["warning"]:
            print(f"warning: {r['warning']}", file=sys.stderr)
        for u in r["unreadable_files"]:
            print(f"skipped {u['path']}: {u['reason']}", file=sys.stderr)
        um = f"{r['pixel_size_um']:.4f} µm per pixel" if r["pixel_size_um"] else "no pooled pixel size (no red cells)"
        print(f"wrote {a.out}: fitted without labels on {r['images']} images of {r['folder']} ({um}; "
              f"{r['batch_norm']}). Its cells are never accepted: label a few cells per class and run "
              "`marrowscope adapt` to earn that.")
        return
    from marrowscope.fit.adapt import adapt

    r = adapt(a.data, a.source, a.out, replay=a.replay, epochs=a.epochs, lr=a.lr, holdout=a.holdout, seed=a.seed,
              workers=a.workers, data_root=a.data_root, mix=a.mix,
              **({} if a.replay_distill is None else {"distill": a.replay_distill}))
    for u in r["unreadable"]:
        print(f"skipped {u['path']}: {u['reason']}", file=sys.stderr)
    print(adapt_report(r, a.out))


SUBCOMMANDS = (_add_prepare, _add_stats, _add_train, _add_cv, _add_adapt, _add_evaluate, _add_calibrate, _add_predict,
               add_count, add_train_detector, add_app, add_export_onnx, add_export_space, add_fit_checks,
               add_choose_second_zoom, add_average_weights)


def quiet_frameworks() -> None:
    """At the default verbosity a lab user sees marrowscope's own lines only: Lightning's status lines and
    tips (GPU available, eval-mode modules, package advertisements) and its advice meant for framework users
    go; marrowscope's own warnings and every error stay. ``--verbose`` keeps them all."""
    import logging
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for message in (".*val_dataloader.*", ".*does not have many workers.*", ".*log_every_n_steps.*",
                    ".*Checkpoint directory .* exists and is not empty.*", ".*predict_dataloader.*"):
        warnings.filterwarnings("ignore", message=message)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="marrowscope", description="Bone-marrow cell classification: prepare, "
                                "train, evaluate, predict, serve.")
    sub = p.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    for s in sub.choices.values():
        s.add_argument("--verbose", action="store_true", help="also show the frameworks' own messages and warnings")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        quiet_frameworks()
    try:
        args.func(args)
    except MarrowscopeError as exc:
        print(f"marrowscope {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

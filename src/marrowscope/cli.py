"""The ``marrowscope`` command: each subcommand parses flags and makes one library call."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from marrowscope.classes import CLASSES
from marrowscope.errors import MarrowscopeError


def _classes(text: str) -> tuple[str, ...]:
    out = tuple(c.strip() for c in text.split(",") if c.strip())
    if len(set(out)) != len(out) or not out:
        raise argparse.ArgumentTypeError(f"--classes needs distinct comma-separated names, got '{text}'")
    return out


def _data_arg(value: str | None) -> str:
    if value:
        return value
    from marrowscope.data import default_data_dir

    found = default_data_dir()
    if found is None:
        raise MarrowscopeError("no DATA given and ../shared/data/bone-marrow-7 is not present; name a dataset "
                               "folder or manifest.")
    return str(found)


def _launch(a) -> dict | None:
    """Lightning launch settings where the user asked for more than one process, else None."""
    if a.devices * a.num_nodes == 1 and a.accelerator in ("auto", "cpu"):
        return None
    return {"devices": a.devices, "num_nodes": a.num_nodes, "accelerator": a.accelerator}


def _add_launch_flags(s) -> None:
    s.add_argument("--devices", type=int, default=1, help="processes (GPUs) per node, through Lightning DDP")
    s.add_argument("--num-nodes", type=int, default=1)
    s.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "cuda", "mps"])


def cmd_prepare(a) -> None:
    from marrowscope.data import count_table, duplicate_groups, format_skipped, format_table, prepare, write_manifest

    samples, skipped = prepare(a.src, a.classes, a.per_class, a.val, a.test, a.seed)
    write_manifest(samples, a.out, a.src)
    if skipped:
        print(format_skipped(skipped), file=sys.stderr)
    dups = duplicate_groups(samples)
    print(format_table(count_table(samples, a.classes)))
    print(f"{len(samples)} images, {dups} in byte-identical groups (kept in one split); manifest: {a.out}")


def cmd_stats(a) -> None:
    import json

    from marrowscope.data import count_table, format_skipped, format_table, load_samples
    from marrowscope.plots import plot_distribution

    samples, skipped = load_samples(_data_arg(a.data), a.classes, seed=a.seed, data_root=a.data_root)
    table = count_table(samples, a.classes or sorted({s.label for s in samples}))
    if skipped:
        print(format_skipped(skipped), file=sys.stderr)
    print(format_table(table))
    out = Path(a.out)
    paths = plot_distribution({c: r["total"] for c, r in table.items()}, out, f"images per class ({len(samples)})")
    (out / "counts.json").write_text(json.dumps(table, indent=2))
    print("wrote " + ", ".join(str(p) for p in [*paths, out / "counts.json"]))


def cmd_train(a) -> None:
    from marrowscope.config import TrainConfig
    from marrowscope.train import fit

    cfg = TrainConfig(**{f.name: getattr(a, f.name) for f in fields(TrainConfig)
                         if getattr(a, f.name, None) is not None})
    cfg.data = _data_arg(a.data)
    fit(cfg)


def cmd_evaluate(a) -> None:
    from marrowscope.evaluate import evaluate, format_report
    from marrowscope.predict import Predictor

    predictor = Predictor(a.model, backend=a.backend, tta=a.tta)
    m = evaluate(predictor, _data_arg(a.data), a.split, a.out, seed=a.seed, data_root=a.data_root,
                 launch=_launch(a))
    if m is None:  # a DDP rank other than 0: rank 0 reports
        return
    print(format_report(m, predictor.classes))
    for u in m["unreadable"]:
        print(f"skipped {u['path']}: {u['reason']}", file=sys.stderr)
    print(f"wrote {a.out}/metrics.json, confusion_matrix.png, reliability.png, predictions.csv")


def cmd_calibrate(a) -> None:
    from marrowscope.calibrate import calibrate
    from marrowscope.predict import Predictor

    r = calibrate(Predictor(a.model, backend=a.backend), _data_arg(a.data), a.split, seed=a.seed,
                  data_root=a.data_root)
    print(f"temperature {r['temperature']:.3f} fitted on {r['images']} images of the {r['split']} split "
          f"(TTA {'on' if r['tta'] else 'off'}): expected calibration error {r['ece_before']:.4f} -> "
          f"{r['ece_after']:.4f}; written to the model's config.json")


def cmd_predict(a) -> None:
    from marrowscope.predict import Predictor
    from marrowscope.report import run_batch

    predictor = Predictor(a.model, backend=a.backend, tta=a.tta)
    result = run_batch(predictor, a.paths, a.out, top_k=a.top_k, review_below=a.review_below,
                       batch_size=a.batch_size, progress=not a.quiet, launch=_launch(a))
    if result is None:  # a DDP rank other than 0: rank 0 reports
        return
    print(result.summary())
    print(f"wrote {a.out} and its _counts.csv")


def cmd_app(a) -> None:
    from marrowscope.app import launch

    launch(a.model, host=a.host, port=a.port, examples_dir=a.examples, explain=not a.no_explain)


def cmd_export_onnx(a) -> None:
    from marrowscope.data import default_data_dir
    from marrowscope.export import export_onnx
    from marrowscope.predict import collect_images, resolve_model_dir

    images, _ = collect_images(a.images) if a.images else ([], [])
    if not images and default_data_dir():
        images = [next((default_data_dir() / c).glob("*.jpg")) for c in CLASSES]
    model_dir = resolve_model_dir(a.model)
    path, diff = export_onnx(model_dir, images[:64])
    print(f"wrote {path}; largest probability difference to PyTorch on "
          f"{len(images[:64]) or 'random'} {'real ' if images else ''}input(s): {diff:.2e}")
    if a.int8:
        from marrowscope.data import read_manifest
        from marrowscope.export import export_int8

        manifest = model_dir / "manifest.csv"
        train = [s.path for s in read_manifest(manifest, a.data_root) if s.split == "train"] if manifest.is_file() else []
        if not train:
            raise MarrowscopeError(f"--int8 calibrates on the training images of '{manifest}', which has none.")
        out = export_int8(model_dir, train[:: max(1, len(train) // a.calibration_images)][: a.calibration_images])
        print(f"wrote {out}, calibrated on {min(len(train), a.calibration_images)} training images; compare "
              f"`evaluate --backend onnx-int8` with `--backend onnx` on the test split before shipping it")


def cmd_export_space(a) -> None:
    from marrowscope.export import export_space

    out = export_space(a.model, a.out_dir)
    print(f"wrote a Hugging Face Space to {out}; try it with: cd {out} && python app.py")


def build_parser() -> argparse.ArgumentParser:
    from marrowscope.config import TrainConfig

    d = TrainConfig()
    p = argparse.ArgumentParser(prog="marrowscope", description="Bone-marrow cell classification: prepare, "
                                "train, evaluate, predict, serve.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prepare", help="sample, split and write a manifest CSV")
    s.add_argument("src", help="folder with one sub-folder per class (flat or nested)")
    s.add_argument("--out", required=True, help="manifest CSV to write")
    s.add_argument("--classes", type=_classes, default=CLASSES)
    s.add_argument("--per-class", type=int, default=None, help="sample at most N images per class (seeded)")
    s.add_argument("--val", type=float, default=0.15)
    s.add_argument("--test", type=float, default=0.15)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("stats", help="class distribution: table, bar and pie charts")
    s.add_argument("data", nargs="?", help="class-folder tree or manifest (default: ../shared/data/bone-marrow-7)")
    s.add_argument("--out", required=True)
    s.add_argument("--classes", type=_classes, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--data-root", default=None)
    s.set_defaults(func=cmd_stats)

    s = sub.add_parser("train", help="train a timm classifier with PyTorch Lightning")
    s.add_argument("data", nargs="?", help="class-folder tree or manifest CSV")
    s.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    s.add_argument("--model", default=d.model, help="timm architecture name (default %(default)s)")
    for name in ("img_size", "epochs", "batch_size", "seed", "patience", "workers", "devices", "num_nodes"):
        s.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "weight_decay", "label_smoothing", "mixup", "drop_rate", "val", "test"):
        s.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    s.add_argument("--classes", type=_classes, default=CLASSES)
    s.add_argument("--pretrained", action="store_true", help="start from ImageNet weights")
    s.add_argument("--init-weights", default=None, help=".safetensors/.pth state dict or model folder to start from")
    s.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "cuda", "mps"])
    s.add_argument("--precision", default=None, help="Lightning precision (default bf16-mixed on GPU, 32 on CPU)")
    s.add_argument("--max-time", default=None, help="stop after DD:HH:MM:SS, keeping the best epoch")
    s.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    s.add_argument("--half", action="store_true", help="store weights as float16")
    s.add_argument("--data-root", default=None, help="where a manifest's images live now")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="metrics on a split the model never trained on")
    s.add_argument("model", nargs="?", default=None, help="model or run folder (default: bundled model)")
    s.add_argument("data", nargs="?", default=None, help="class-folder tree or manifest")
    s.add_argument("--split", default="test", choices=["test", "val", "train", "all"])
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0, help="seed of the on-the-fly split of a folder")
    s.add_argument("--data-root", default=None)
    s.add_argument("--backend", default="auto", choices=["auto", "onnx", "onnx-int8", "torch"])
    s.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average over flips and 90-degree turns, 4x the compute (default: as the model folder says)")
    _add_launch_flags(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("calibrate", help="fit a softmax temperature on validation images")
    s.add_argument("model", nargs="?", default=None, help="model folder (default: bundled model)")
    s.add_argument("data", nargs="?", default=None, help="class-folder tree or manifest")
    s.add_argument("--split", default="val", choices=["val", "train"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--data-root", default=None)
    s.add_argument("--backend", default="auto", choices=["auto", "onnx", "onnx-int8", "torch"])
    s.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("predict", help="classify images and count cells per class")
    s.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    s.add_argument("--model", default=None, help="model folder (default: bundled model)")
    s.add_argument("--out", default="predictions.csv")
    s.add_argument("--top-k", type=int, default=3)
    s.add_argument("--review-below", type=float, default=0.6, help="flag cells whose top probability is lower")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--backend", default="auto", choices=["auto", "onnx", "onnx-int8", "torch"])
    s.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average over flips and 90-degree turns, 4x the compute (default: as the model folder says)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_launch_flags(s)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("app", help="launch the Gradio web app")
    s.add_argument("--model", default=None, help="model folder (default: bundled model)")
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--examples", default=None, help="class-folder tree to take example images from "
                   "(default: ../shared/data/bone-marrow-7 if present)")
    s.add_argument("--no-explain", action="store_true", help="skip Grad-CAM overlays")
    s.set_defaults(func=cmd_app)

    s = sub.add_parser("export-onnx", help="write model.onnx into the model folder, checked against PyTorch")
    s.add_argument("model", nargs="?", default=None, help="model folder (default: bundled model)")
    s.add_argument("--images", nargs="*", default=None, help="images or folders to check on "
                   "(default: one per class from ../shared/data/bone-marrow-7 if present, else random input)")
    s.add_argument("--int8", action="store_true", help="also write model.int8.onnx (static INT8, ONNX Runtime)")
    s.add_argument("--calibration-images", type=int, default=200, help="training images for INT8 calibration")
    s.add_argument("--data-root", default=None, help="where the model manifest's images live now")
    s.set_defaults(func=cmd_export_onnx)

    s = sub.add_parser("export-space", help="write a folder ready to push as a Hugging Face Space")
    s.add_argument("model", nargs="?", default=None, help="model folder (default: bundled model)")
    s.add_argument("out_dir")
    s.set_defaults(func=cmd_export_space)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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

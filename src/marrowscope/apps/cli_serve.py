"""The ``marrowscope`` subcommands that serve or export a model: the app, ONNX, a Hugging Face Space."""

from __future__ import annotations

import argparse

from marrowscope.apps.cli_args import model_flag, take_old_model


def add_app(sub) -> None:
    s = sub.add_parser("app", help="launch the Gradio web app")
    model_flag(s)
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--examples", default=None, help="class-folder tree to take example images from "
                   "(default: ../shared/data/bone-marrow-7 if present)")
    s.add_argument("--no-explain", action="store_true", help="skip Grad-CAM overlays")
    s.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                   help="default micrometres per pixel of uploads (each upload may set its own)")
    s.set_defaults(func=cmd_app)


def cmd_app(a) -> None:
    from marrowscope.apps.app import launch

    launch(a.model, host=a.host, port=a.port, examples_dir=a.examples, explain=not a.no_explain,
           pixel_size=a.pixel_size)


def add_export_onnx(sub) -> None:
    s = sub.add_parser("export-onnx", help="write model.onnx into the model folder, checked against PyTorch")
    s.add_argument("paths", nargs="*", metavar="MODEL", help=argparse.SUPPRESS)  # deprecated form
    model_flag(s)
    s.add_argument("--images", nargs="*", default=None, help="images or folders to check on "
                   "(default: one per class from ../shared/data/bone-marrow-7 if present, else random input)")
    s.add_argument("--int8", action="store_true", help="also write model.int8.onnx (static INT8, ONNX "
                   "Runtime), if it agrees with fp32 on real images on this machine")
    s.add_argument("--calibration-images", type=int, default=200, help="training images for INT8 calibration")
    s.add_argument("--check-images", type=int, default=200, help="other images of the model's manifest the INT8 "
                   "model must agree with fp32 on, or it is not written")
    s.add_argument("--data-root", default=None, help="folder the model manifest's paths start from")
    s.set_defaults(func=cmd_export_onnx)


def cmd_export_onnx(a) -> None:
    from marrowscope.core.artifacts import resolve_model_dir
    from marrowscope.fit.export import check_images, export_int8, export_onnx, int8_images

    take_old_model(a, list(a.paths), leading=True)
    model_dir, images = resolve_model_dir(a.model), check_images(a.images)
    path, diff = export_onnx(model_dir, images)
    print(f"wrote {path}; largest probability difference to PyTorch on "
          f"{len(images) or 'random'} {'real ' if images else ''}input(s): {diff:.2e}")
    if a.int8:
        train = int8_images(model_dir, a.calibration_images, a.data_root)
        check = int8_images(model_dir, a.check_images, a.data_root, train=False)
        path, c = export_int8(model_dir, train, check)
        print(f"wrote {path} ({c['format']}), calibrated on {len(train)} training images; against fp32 on "
              f"{len(check)} other images: probabilities at most {c['max_prob_diff']:.3f} apart, the same top "
              f"class for {c['top1_agreement']:.1%}. `--backend auto` now uses it; compare `evaluate --backend "
              "onnx-int8` with `--backend onnx` before shipping it")


def add_export_space(sub) -> None:
    s = sub.add_parser("export-space", help="write a folder ready to push as a Hugging Face Space")
    s.add_argument("paths", nargs="+", metavar="OUT_DIR", help="the folder to write")
    model_flag(s)
    s.set_defaults(func=cmd_export_space)


def cmd_export_space(a) -> None:
    from marrowscope.fit.export import export_space

    rest = take_old_model(a, list(a.paths), leading=len(a.paths) == 2)
    out = export_space(a.model, rest[0])
    print(f"wrote a Hugging Face Space to {out}; try it with: cd {out} && python app.py")

"""Argument types and flag groups shared by the ``marrowscope`` subcommands, and the one
convention for naming a model: ``--model DIR``, with the older positional form still read."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from marrowscope.core.errors import MarrowscopeError


class Deprecated(argparse.Action):
    """An old spelling of a flag, kept for one release: stores into the new flag's ``dest`` and says which
    flag to use instead."""

    def __init__(self, option_strings, dest, new: str = "", **kw):
        super().__init__(option_strings, dest, **kw)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        new = self.new or "--" + self.dest.replace("_", "-")
        print(f"{parser.prog}: {option_string} is deprecated and will be removed in the next release; use {new}",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def classes_arg(text: str) -> tuple[str, ...]:
    out = tuple(c.strip() for c in text.split(",") if c.strip())
    if len(set(out)) != len(out) or not out:
        raise argparse.ArgumentTypeError(f"--classes needs distinct comma-separated names, got '{text}'")
    return out


def _is_model_dir(path: str) -> bool:
    return (Path(path) / "config.json").is_file() or (Path(path) / "model" / "config.json").is_file()


def take_old_model(a, positional: list[str], leading: bool) -> list[str]:
    """Accept the model as a leading positional argument (marrowscope 0.1), saying it is deprecated."""
    if positional and (leading or _is_model_dir(positional[0])):
        model = positional.pop(0)
        if a.model:
            raise MarrowscopeError(f"the model is given twice ('{model}' and --model {a.model}); use --model only.")
        print(f"marrowscope {a.command}: a model as first argument is deprecated; use --model {model}",
              file=sys.stderr)
        a.model = model
    return positional


def model_then_data(a) -> None:
    """``[DATA]`` with ``--model``; the deprecated ``MODEL [DATA]`` form is recognised."""
    if len(a.paths) > 2:
        raise MarrowscopeError(f"expected at most a DATA argument, got {a.paths}.")
    rest = take_old_model(a, list(a.paths), leading=len(a.paths) == 2)
    a.data = rest[0] if rest else None


def model_flag(s) -> None:
    s.add_argument("--model", default=None, help="model or run folder (default: the bundled model)")


def inference_flags(s) -> None:
    from marrowscope.core.predict import BACKENDS

    model_flag(s)
    s.add_argument("--backend", default="auto", choices=BACKENDS)
    s.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average over flips and 90-degree turns, 4x the compute (default: as the model folder says)")
    s.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                   help="micrometres per pixel of the images (default: estimated from their red cells, else "
                        "assumed equal to the training images')")


def launch_flags(s) -> None:
    s.add_argument("--devices", type=int, default=1, help="processes (GPUs) per node, through Lightning DDP")
    s.add_argument("--num-nodes", type=int, default=1)
    s.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "cuda", "mps"])


def launch_settings(a) -> dict | None:
    """Lightning launch settings where the user asked for more than one process, else None."""
    if a.devices * a.num_nodes == 1 and a.accelerator in ("auto", "cpu"):
        return None
    return {"devices": a.devices, "num_nodes": a.num_nodes, "accelerator": a.accelerator}


def data_flags(s, nargs: str = "?") -> None:
    s.add_argument("data" if nargs == "?" else "paths", nargs=nargs, metavar="DATA",
                   help="class-folder tree or manifest (default: ../shared/data/bone-marrow-7)")
    s.add_argument("--seed", type=int, default=0, help="seed of the on-the-fly split of a folder")
    s.add_argument("--data-root", default=None, help="folder that now holds a manifest's class folders")


def train_flags(s) -> None:
    """The training recipe's flags (train and cv), defaults from :class:`TrainConfig`."""
    from marrowscope.core.config import TrainConfig
    from marrowscope.fit.transforms import AUGMENTATIONS

    d = TrainConfig()
    s.add_argument("--arch", dest="model", default=d.model, help="timm architecture name (default %(default)s)")
    s.add_argument("--model", dest="model", action=Deprecated, new="--arch", help=argparse.SUPPRESS)
    for name in ("img_size", "epochs", "batch_size", "seed", "patience", "devices", "num_nodes", "max_steps"):
        s.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    s.add_argument("--workers", type=int, default=None,
                   help="loader processes per training process (default: none on the CPU, where the step's own "
                   "threads use every core; up to 8 on a GPU)")
    for name in ("lr", "weight_decay", "label_smoothing", "mixup", "drop_rate", "val", "test", "distill_weight"):
        s.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    s.add_argument("--classes", type=classes_arg, default=d.classes)
    s.add_argument("--augment", default=d.augment, choices=AUGMENTATIONS,
                   help="light: crops, flips, colour; lab: also stain, background, zoom, blur, JPEG; "
                        "lab-sharp: lab and sharpening")
    s.add_argument("--augment-on", default=d.augment_on, choices=["auto", "cpu", "device"],
                   help="where the lab recipe runs: per image on the CPU, or batched on the device (auto: on a GPU)")
    s.add_argument("--distill", default=None, help="CSV of a teacher's probabilities per image (cv's oof.csv): "
                   "train on them as soft targets beside the labels")
    s.add_argument("--keep", default=d.keep, choices=["best", "last"],
                   help="keep the best epoch by val macro-F1, or the last (no choice on validation images)")
    s.add_argument("--no-checks", dest="checks", action="store_false",
                   help="skip measuring the training scale and fitting the domain check at the end")
    s.add_argument("--pretrained", action="store_true", help="start from ImageNet weights")
    s.add_argument("--init-weights", default=None, help=".safetensors/.pth state dict or model folder to start from")
    s.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "cuda", "mps"])
    s.add_argument("--precision", default=None, help="Lightning precision (default bf16-mixed on GPU, 32 on CPU)")
    s.add_argument("--max-time", default=None, help="stop after DD:HH:MM:SS, keeping the best epoch")
    s.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    s.add_argument("--half", action="store_true", help="store weights as float16")
    s.add_argument("--data-root", default=None, help="folder a manifest's paths start from")

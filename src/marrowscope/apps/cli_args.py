"""Argument types and flag groups shared by the ``marrowscope`` subcommands, and the one
convention for naming a model: ``--model DIR``, with the older positional form still read."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
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
    from marrowscope.core.config import BACKENDS

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
    """The training recipe's flags (train and cv), one per :class:`TrainConfig` field but ``data`` and
    ``out``: name, default, choices and help come from the dataclass, so they are written once."""
    from marrowscope.core.config import TrainConfig

    for f in fields(TrainConfig):
        if f.name in ("data", "out"):
            continue
        meta, flag = f.metadata, f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        kw = {"dest": f.name, "help": meta.get("help") or None}
        if f.type == "bool":  # on by default: a --no-X flag turns it off; off by default: --X turns it on
            kw["action"] = "store_false" if f.default else "store_true"
        else:
            kw["default"] = f.default
            kw["type"] = {"int": int, "float": float, "classes": classes_arg}.get(meta.get("parse") or f.type,
                                                                                  meta.get("type", str))
            if "choices" in meta:
                kw["choices"] = meta["choices"]
        s.add_argument(flag, **kw)
    s.add_argument("--model", dest="model", action=Deprecated, new="--arch", help=argparse.SUPPRESS)

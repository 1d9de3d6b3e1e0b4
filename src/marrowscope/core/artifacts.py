"""The model folder: the contract between training and everything else.

A model folder is timm's own format, ``model.safetensors`` + ``config.json`` (architecture,
``num_classes``, ``label_names``, ``pretrained_cfg`` with input size, mean and std), so
``timm.create_model("local-dir:PATH", pretrained=True)`` reads it too. Training reports
(``history.csv``, ``metrics.json``, plots, the manifest) may sit beside it. Evaluate, predict,
the app, the exports and the Space read only this folder, never a Lightning checkpoint.

Weights load only from safetensors, which cannot execute code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from marrowscope.core.classes import FULL_NAMES
from marrowscope.core.config import ONNX_FILES
from marrowscope.core.errors import MarrowscopeError

if TYPE_CHECKING:  # reading a folder's config needs no torch; loading or saving its weights does
    from torch import nn

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
REQUIRED = ("architecture", "num_classes", "label_names", "pretrained_cfg")
DEFAULT_MODEL = Path(os.environ.get("MARROWSCOPE_MODEL", Path(__file__).resolve().parents[3] / "models" / "default"))
# fitting a lab without labels (`adapt --unlabelled`) needs this many readable cells: fewer, and the
# statistics are mostly noise
LABEL_FREE_MIN_CELLS = 100
# An adapted folder's copy of the model folder it was adapted from (labelled ``adapt``): cells its own
# domain check finds like its training cells keep that model's calls (:class:`~marrowscope.core.predict.Predictor`)
HOME = "home"
# the files that decide what a model folder predicts (what a resumed run checks, what an adapted folder's
# home keeps)
MODEL_FILES = (CONFIG, WEIGHTS, *ONNX_FILES.values(), "domain.safetensors")  # core.domain's file; it needs numpy


@dataclass
class ModelInfo:
    """What a model folder says about itself."""

    path: Path
    architecture: str
    classes: list[str]
    data_config: dict
    model_args: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def tta(self) -> bool:
        """Whether inference averages over flips and turns by default (set by ``calibrate --tta``)."""
        return bool(self.extra.get("tta", False))

    @property
    def scale(self) -> Optional[dict]:
        """The training images' pixel size and field (``pixel_size_um``, ``field_px``), if measured."""
        scale = self.extra.get("scale")
        return scale if scale and {"pixel_size_um", "field_px"} <= set(scale) else None

    @property
    def second_zoom(self) -> Optional[float]:
        """The zoom (below 1: smaller) of the second reading of images the domain check flags, if chosen
        (``marrowscope choose-second-zoom``; :meth:`marrowscope.core.predict.Predictor.read_again`)."""
        zoom = (self.extra.get("second_reading") or {}).get("zoom")
        return float(zoom) if zoom else None

    @property
    def focus(self) -> Optional[dict]:
        """The training images' sharpness (``median``, ``above``: :mod:`marrowscope.core.focus`), if measured."""
        return self.extra.get("focus") or None

    @property
    def label_free(self) -> Optional[dict]:
        """What ``adapt --unlabelled`` fitted, from what (None for a folder fitted with labels or not adapted):
        its cells are never accepted, and its images are read at the lab's pooled pixel size."""
        return self.extra.get("label_free") or None

    @property
    def home(self) -> Optional[Path]:
        """The source model folder an adapted folder carries (``HOME``), which keeps the calls of cells like
        its own training cells; None for a folder without one."""
        home = self.path / HOME
        return home if (self.extra.get("adapted") or {}).get("home") and (home / CONFIG).is_file() else None

    def policy(self, tta: bool) -> Optional[dict]:
        """The review policy fitted for inference with or without TTA (`marrowscope calibrate`), or None."""
        return (self.extra.get("policy") or {}).get("tta" if tta else "no_tta")

    def temperature(self, tta: bool) -> float:
        """The softmax temperature fitted for inference with or without TTA; 1.0 if none was."""
        t = self.extra.get("temperature", 1.0)
        if isinstance(t, dict):
            return float(t.get("tta" if tta else "no_tta", 1.0))
        # marrowscope 0.1 stored one number, fitted with the folder's own TTA setting
        return float(t) if tta == self.tta else 1.0


def save_model_folder(net: nn.Module, out_dir: str | Path, classes: Sequence[str], data_config: dict,
                      extra: Optional[dict] = None, half: bool = False,
                      files: Optional[dict[str, Path]] = None) -> Path:
    """Write weights + config into ``out_dir`` atomically: a temporary folder, then a rename.

    A training killed half-way through writing therefore never leaves a half-written model
    folder; an existing folder is replaced only once the new one is complete.

    Args:
        half: store weights in float16 (half the size; they load back as float32).
        files: extra files to copy in, name -> source path (history, manifest, an adapted folder's home
            model files as ``home/NAME``, ...).
    """
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
                 for k, v in net.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        model_config = {"label_names": list(classes), **({"marrowscope": extra} if extra else {})}

        descriptions = {c: FULL_NAMES[c] for c in classes if c in FULL_NAMES}
        if descriptions:
            model_config["label_descriptions"] = descriptions
        save_config_for_hf(net, str(tmp / CONFIG), model_config=model_config, data_config=dict(data_config))
        for name, src in (files or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / name)
        old = out_dir.with_name(f".{out_dir.name}.old")
        if out_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_model_info(path: str | Path) -> ModelInfo:
    """Parse and check ``config.json`` of a model folder.

    Raises:
        MarrowscopeError: the folder, its config or its weights are missing, or the config lacks
            a field marrowscope needs.
    """
    path = Path(path)
    if not path.is_dir():
        raise MarrowscopeError(f"model folder '{path}' does not exist (looked in {path.resolve()}; expected a folder "
                               f"with {WEIGHTS} and {CONFIG}).")
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            other = " (found pytorch_model.bin: marrowscope loads only safetensors, which cannot run code)" \
                if name == WEIGHTS and (path / "pytorch_model.bin").exists() else ""
            raise MarrowscopeError(f"'{path}' is not a marrowscope model folder: {name} is missing{other}.")
    try:
        cfg: dict[str, Any] = json.loads((path / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MarrowscopeError(f"'{path / CONFIG}' is not valid JSON ({exc}).") from None
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise MarrowscopeError(f"'{path / CONFIG}' lacks the field(s) {', '.join(missing)}; "
                               "it was not written by marrowscope or timm's save_for_hf.")
    labels = cfg["label_names"]
    if not isinstance(labels, list) or len(labels) != cfg["num_classes"] or len(set(labels)) != len(labels):
        raise MarrowscopeError(f"'{path / CONFIG}': label_names must list {cfg['num_classes']} distinct classes, "
                               f"got {labels!r}.")
    pcfg = cfg["pretrained_cfg"]
    data_config = {k: pcfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
                   if k in pcfg}
    if not {"input_size", "mean", "std"} <= set(data_config):
        raise MarrowscopeError(f"'{path / CONFIG}': pretrained_cfg needs input_size, mean and std.")
    return ModelInfo(path, cfg["architecture"], list(labels), data_config, cfg.get("model_args", {}),
                     cfg.get("marrowscope", {}))


def load_model_folder(path: str | Path) -> tuple[nn.Module, ModelInfo]:
    """Build the network of a model folder and load its weights (eval mode, float32)."""
    import timm
    from safetensors.torch import load_file

    info = read_model_info(path)
    try:
        net = timm.create_model(info.architecture, pretrained=False,
                                **{**info.model_args, "num_classes": len(info.classes)})
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise MarrowscopeError(f"'{info.path / CONFIG}': cannot build architecture '{info.architecture}' "
                               f"({exc}).") from None
    try:
        state = load_file(str(info.path / WEIGHTS), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise MarrowscopeError(f"'{info.path / WEIGHTS}' is not a valid safetensors file ({exc}).") from None
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:2]
        raise MarrowscopeError(f"the weights in '{info.path}' do not match architecture '{info.architecture}' "
                               f"with {len(info.classes)} classes ({' '.join(first)[:200]}).") from None
    return net.eval(), info


def blend_weights(states: Sequence[dict], weights: Sequence[float]) -> dict:
    """sum_i weights[i] * states[i] of like networks' state dicts, for floating tensors (weights and
    BatchNorm statistics, computed in float32, stored in the first's dtype); other tensors (batch
    counts) are the first's. A model soup (``marrowscope average-weights``) and WiSE-FT (``adapt --mix``)."""
    return {k: sum(w * s[k].float() for w, s in zip(weights, states)).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[0].items()}


def resolve_model_dir(path: Optional[str | Path]) -> Path:
    """The model folder a command should use: the one named (a run folder means its ``model/``),
    else the bundled default."""
    if path:
        path = Path(path)
        return path / "model" if (path / "model" / CONFIG).is_file() else path
    if not (DEFAULT_MODEL / CONFIG).is_file():
        raise MarrowscopeError(f"no model named, and this installation has no bundled model (looked in "
                               f"'{DEFAULT_MODEL}'; it ships in the source checkout's models/default): pass "
                               "--model DIR or set MARROWSCOPE_MODEL to a model folder.")
    return DEFAULT_MODEL


def write_settings(model_dir: str | Path, **settings: Any) -> dict:
    """Update the inference settings (``marrowscope`` section of config.json) of a model folder,
    atomically; the only writer of config.json besides :func:`save_model_folder`."""
    cfg_path = Path(model_dir) / CONFIG
    read_model_info(model_dir)  # refuse to touch a folder that is not a model folder
    cfg = json.loads(cfg_path.read_text())
    cfg.setdefault("marrowscope", {}).update(settings)
    tmp = cfg_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg, indent=2))
    os.replace(tmp, cfg_path)
    return cfg["marrowscope"]


def check_classes(info: ModelInfo, labels: Sequence[str], where: str) -> None:
    """Refuse data whose classes the model does not know, naming both lists."""
    unknown = sorted(set(labels) - set(info.classes))
    if unknown:
        raise MarrowscopeError(f"{where} has classes {unknown} that model '{info.path}' does not know; "
                               f"its classes are {info.classes}.")

"""Training the white-cell detector on boxed fields (``marrowscope train-detector``).

The frames are brought to the detection scale exactly as counting brings a field
(:func:`marrowscope.core.detect.field_scale`, then :func:`~marrowscope.core.detect.to_detection_scale`),
so the network learns cells at the size it will see them, including frames whose red cells give no
estimate. Augmentation: scale jitter of ±25% (the estimate's spread between labs), flips and
90-degree turns (a cell has no orientation), and colour jitter (stains differ between labs).

The network is torchvision's FCOS (:mod:`marrowscope.core.detector_net`); this module only feeds it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from marrowscope.core.detect import (
    ASSUMED_UM,
    DETECT_UM,
    OVERLAP,
    PAD_VALUE,
    TILE,
    field_scale,
    to_detection_scale,
)
from marrowscope.core.detector_net import TileOutputs, build_detector, network_tile_boxes
from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.images import decode_image

WHITE_CELL = 0  # the YOLO class of white cells in the boxed frames (1 red cells, 2 platelets)


@dataclass
class Frame:
    """A boxed field: its file, its white-cell boxes [K, 4] in its pixels (x0, y0, x1, y1), its size."""

    path: Path
    boxes: np.ndarray
    size: tuple[int, int]


def read_frames(root: str | Path, split: str) -> list[Frame]:
    """The frames of one split of a YOLO-layout folder (``images/SPLIT/*.jpg``, ``labels/SPLIT/*.txt``)."""
    root = Path(root)
    images = sorted((root / "images" / split).glob("*.jpg")) + sorted((root / "images" / split).glob("*.png"))
    if not images:
        raise MarrowscopeError(f"no frames in '{root / 'images' / split}'; expected the YOLO layout "
                               f"images/{split}/NAME.jpg with labels/{split}/NAME.txt.")
    frames = []
    for path in images:
        with Image.open(path) as im:
            w, h = im.size
        label = root / "labels" / split / (path.stem + ".txt")
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()] if label.is_file() else []
        boxes = [[(float(x) - float(bw) / 2) * w, (float(y) - float(bh) / 2) * h,
                  (float(x) + float(bw) / 2) * w, (float(y) + float(bh) / 2) * h]
                 for c, x, y, bw, bh in rows if int(c) == WHITE_CELL]
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        # one box repeated is one cell: a test frame of blood-fields lists the same white cell six times
        frames.append(Frame(path, np.unique(boxes.round(2), axis=0), (w, h)))
    return frames


class TileSet(Dataset):
    """Frames at the detection scale, each in one tile: (image [3, T, T] in [0, 1], FCOS target)."""

    def __init__(self, frames: Sequence[Frame], train: bool, tile: int = TILE, seed: int = 0):
        self.frames, self.train, self.tile = list(frames), train, tile
        self.rng = random.Random(seed)
        self.images = [decode_image(f.path) for f in self.frames]
        self.scales = [field_scale(im, None, ASSUMED_UM).pixel_size_um for im in self.images]

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int):
        jitter = 2 ** self.rng.uniform(-0.32, 0.32) if self.train else 1.0  # ±25%
        array, factor = to_detection_scale(self.images[i], self.scales[i] * jitter)
        boxes = self.frames[i].boxes * factor
        h, w = array.shape[:2]
        t = self.tile
        # a frame larger than a tile: a random window (the centre one for validation); smaller: placed
        # at a random spot of a grey tile, as counting pads a frame's last tiles
        ox = self.rng.randint(0, max(0, w - t)) if self.train else max(0, (w - t) // 2)
        oy = self.rng.randint(0, max(0, h - t)) if self.train else max(0, (h - t) // 2)
        part = array[oy: oy + t, ox: ox + t]
        px = self.rng.randint(0, t - part.shape[1]) if self.train else 0
        py = self.rng.randint(0, t - part.shape[0]) if self.train else 0
        canvas = np.full((t, t, 3), PAD_VALUE, np.float32)
        canvas[py: py + part.shape[0], px: px + part.shape[1]] = part
        boxes = boxes - [ox - px, oy - py, ox - px, oy - py]
        clipped = boxes.copy()
        clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(px, px + part.shape[1])
        clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(py, py + part.shape[0])
        area = lambda b: (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)  # noqa: E731
        keep = area(clipped) >= 0.4 * np.maximum(area(boxes), 1e-6)  # a cell mostly outside the window is not one
        boxes = clipped[keep]
        if self.train:
            canvas, boxes = self._turn(canvas, boxes)
            canvas = self._colour(canvas)
        image = torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1)))
        target = {"boxes": torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 4),
                  "labels": torch.ones(len(boxes), dtype=torch.int64)}
        return image, target

    def _turn(self, canvas: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self.tile
        if self.rng.random() < 0.5:
            canvas, boxes = canvas[:, ::-1], np.stack([t - boxes[:, 2], boxes[:, 1], t - boxes[:, 0], boxes[:, 3]], 1)
        if self.rng.random() < 0.5:
            canvas, boxes = canvas[::-1], np.stack([boxes[:, 0], t - boxes[:, 3], boxes[:, 2], t - boxes[:, 1]], 1)
        if self.rng.random() < 0.5:  # transpose: with the flips, all eight turns and mirrors
            canvas, boxes = canvas.transpose(1, 0, 2), boxes[:, [1, 0, 3, 2]]
        return canvas, boxes.reshape(-1, 4)

    def _colour(self, canvas: np.ndarray) -> np.ndarray:
        gain = np.array([self.rng.uniform(0.85, 1.15) for _ in range(3)], np.float32)
        gamma = self.rng.uniform(0.75, 1.33)
        return (canvas.clip(0, 1) ** gamma * gain).clip(0, 1).astype(np.float32)


def collate(batch):
    return [b[0] for b in batch], [b[1] for b in batch]


class CellDetector(L.LightningModule):
    """A thin LightningModule around the FCOS network: its summed losses, AdamW, a cosine schedule, and
    AP at IoU 0.5 on the validation tiles each epoch (``val_ap50``; the checkpoint keeps the best)."""

    def __init__(self, net, lr: float = 1e-3, weight_decay: float = 1e-4):
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        from torchmetrics.detection import MeanAveragePrecision

        self.ap = MeanAveragePrecision(iou_thresholds=[0.5])

    def training_step(self, batch, _):
        losses = self.net(*batch)
        loss = sum(losses.values())
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch[0]))
        for k, v in losses.items():
            self.log(f"train_{k}", v, on_step=False, on_epoch=True, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch, _):
        images, targets = batch
        self.ap.update(self.net(images), targets)

    def on_validation_epoch_end(self):
        self.log("val_ap50", self.ap.compute()["map_50"], prog_bar=True)
        self.ap.reset()

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, self.hparams.lr, pct_start=0.15,
                                                    total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def freeze_early(net) -> None:
    """The stem and the first two stages keep their ImageNet weights: edges and colours, which boxes of
    one object class cannot teach better, and a third less compute in each backward pass on a CPU."""
    body = net.backbone.body
    for module in (body.conv_stem, body.bn1, body.blocks[0], body.blocks[1]):
        for p in module.parameters():
            p.requires_grad = False


def train_detector(data: str | Path, out: str | Path, *, arch: str = "tf_efficientnet_lite0", epochs: int = 12,
                   batch_size: int = 16, lr: float = 1e-3, seed: int = 0, limit: Optional[int] = None,
                   resume: bool = True, max_time: Optional[str] = None) -> Path:
    """Train on ``data``'s train split, pick the epoch by AP50 on its val split, choose the score threshold
    on val, and write the detector folder ``out`` (weights, config with the threshold, ONNX) atomically.
    Checkpoints go to ``out``.ckpt/ so an interrupted run resumes (``resume``)."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    out = Path(out)
    L.seed_everything(seed, workers=True)
    train_frames, val_frames = read_frames(data, "train"), read_frames(data, "val")
    if limit:  # for tests: a few frames of each split
        train_frames, val_frames = train_frames[:limit], val_frames[:limit]
    net = build_detector(arch, TILE, pretrained=True)
    freeze_early(net)
    work = out.parent / (out.name + ".ckpt")
    best = ModelCheckpoint(dirpath=work, filename="best", monitor="val_ap50", mode="max", save_last=True)
    trainer = L.Trainer(max_epochs=epochs, accelerator="auto", devices=1, logger=CSVLogger(work, name="logs"),
                        callbacks=[best], num_sanity_val_steps=0, log_every_n_steps=10, max_time=max_time,
                        enable_model_summary=False,
                        enable_progress_bar=bool(os.environ.get("MARROWSCOPE_PROGRESS")))
    train_dl = DataLoader(TileSet(train_frames, True, seed=seed), batch_size, shuffle=True, collate_fn=collate)
    val_dl = DataLoader(TileSet(val_frames, False), batch_size, collate_fn=collate)
    module = CellDetector(net, lr)
    last = work / "last.ckpt"
    trainer.fit(module, train_dl, val_dl, ckpt_path=str(last) if resume and last.is_file() else None)
    if best.best_model_path:
        module.load_state_dict(torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"])
    net = module.net.eval().cpu()
    from marrowscope.report.detection import choose_threshold, score_frames

    scored = score_frames(_TorchTiles(net), val_frames)
    threshold, at = choose_threshold(scored)
    config = {"architecture": arch, "tile": TILE, "overlap": OVERLAP, "detect_um": DETECT_UM,
              "threshold": round(threshold, 4), "assumed_um": ASSUMED_UM,
              "validation": {"frames": len(val_frames), "data": f"{Path(data).name} (val split)", **at},
              "trained_on": f"{len(train_frames)} frames of {Path(data).name} (train split), {epochs} epochs"}
    write_detector_folder(net, out, config)
    return out


class _TorchTiles:
    """The network in training memory as a detector (for choosing its threshold before it is written)."""

    name, tile, threshold = "network", TILE, 0.0

    def __init__(self, net):
        self.net = net

    def tile_boxes(self, tile: np.ndarray):
        return network_tile_boxes(self.net, tile)


def write_detector_folder(net, out: str | Path, config: dict) -> Path:
    """Weights (safetensors), config.json and model.onnx into ``out``, atomically: a temporary folder,
    then a rename; an existing detector is replaced only once the new one is complete."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        # half precision on disk, as the classifier's weights; the network takes the rounded weights too, so
        # that its ONNX file and the PyTorch backend (which loads them into float32) give the same boxes
        state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in net.state_dict().items()}
        net.load_state_dict(state)
        save_file(state, str(tmp / "model.safetensors"))
        export_detector_onnx(net, tmp / "model.onnx", config["tile"])
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.chmod(0o755)  # mkdtemp made it private; a model folder is for everyone who runs marrowscope
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_detector_onnx(net, path: Path, tile: int) -> None:
    """One tile in, (boxes, scores) out: torchvision's box decoding and NMS are inside the file, so the
    ONNX Runtime path needs no torch."""
    import warnings

    with warnings.catch_warnings():  # torchvision's tracer warnings about Python scalars in its transforms
        warnings.simplefilter("ignore")
        torch.onnx.export(TileOutputs(net.eval()), (torch.full((1, 3, tile, tile), PAD_VALUE),), str(path),
                          opset_version=17, dynamo=False, input_names=["image"], output_names=["boxes", "scores"])

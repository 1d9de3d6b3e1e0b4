"""Finding white cells in a whole field of view: the frame's physical scale, tiles, and a detector.

A field is brought to one detection scale (:data:`DETECT_UM` µm per pixel, from the frame's red cells
or ``--pixel-size``), cut into overlapping tiles of :data:`TILE` px, and each tile goes through the
detector. The overlap is wider than any white cell, so every whole cell lies whole in some tile, and a
box is kept only from the tile that *owns* its centre (the tile's core: the tile less half the overlap
on each inner side). No cell is counted twice and no box-merging heuristic is needed.

Two detectors share this path:

- :class:`Detector`: the trained network (torchvision FCOS, :mod:`marrowscope.core.detector_net`) from a
  model folder's ``detector/`` folder, through ONNX Runtime (no torch) or PyTorch.
- :class:`NucleusDetector`: the classical baseline: a threshold on the nucleus stain, lobes joined,
  touching nuclei split at the watershed of their distance transform, the box grown by the cytoplasm.
  It needs no weights; ``bench/detection.py`` compares both on the same frames.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from PIL import Image

from marrowscope.core.artifacts import DEFAULT_MODEL
from marrowscope.core.errors import MarrowscopeError
from marrowscope.core.scale import ASSUMED, Scale, pixel_size_from, red_cell_diameters

DETECT_UM = 0.4  # µm per pixel the detector works at: a white cell (10-25 µm) is 25-60 px, a red cell 19 px
TILE = 256  # px at the detection scale: 102 µm of the slide per tile
OVERLAP = 96  # px (38 µm): wider than any white cell, so each whole cell lies whole in some tile
PAD_VALUE = 0.5  # a tile past the frame's edge is grey (0 after the Lite networks' normalisation)
MAX_FIELD_PIXELS = 8000 * 8000  # peak memory stays about 1 GB; larger scans are cut into frames first
SCALE_WINDOW = 512  # the red-cell estimate runs on windows of this many frame pixels, pooled
ASSUMED_UM = 0.095  # a frame without red cells, where no classifier says otherwise: bone-marrow-7's pixel size
DETECTOR_DIR = "detector"


@dataclass(frozen=True)
class Box:
    """A detected white cell: its box in the frame's pixels (x0, y0, x1, y1) and the detector's score."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def touches_edge(self, width: int, height: int, margin: float = 1.0) -> bool:
        """The box reaches the frame's edge: the cell is cut by it, so its class and count are unsure."""
        return self.x0 <= margin or self.y0 <= margin or self.x1 >= width - margin or self.y1 >= height - margin

    def covers(self, x: float, y: float) -> bool:
        return self.x0 <= x <= self.x1 and self.y0 <= y <= self.y1


def field_scale(image: Image.Image, given_um: Optional[float], assumed_um: float, assumed_how: str = ASSUMED
                ) -> Scale:
    """The frame's pixel size: ``given_um``, else from its whole red cells (pooled over up to 9 windows of a
    large frame: one estimate for the frame, not one per cell), else ``assumed_um`` (``assumed_how`` says
    whose it is)."""
    if given_um:
        return Scale(float(given_um), "given")
    w, h = image.size
    if max(w, h) <= SCALE_WINDOW:  # a camera frame or crop: one estimate over it, as predict makes
        diameters = red_cell_diameters(image)
    else:
        side = min(SCALE_WINDOW, w, h)
        xs = np.linspace(0, w - side, 3 if w > 2 * side else 1).round().astype(int)
        ys = np.linspace(0, h - side, 3 if h > 2 * side else 1).round().astype(int)
        diameters = [d for y in ys for x in xs for d in red_cell_diameters(image.crop((x, y, x + side, y + side)))]
    um, n = pixel_size_from(diameters)
    return Scale(um, f"from {n} red cells") if um else Scale(assumed_um, assumed_how)


def to_detection_scale(image: Image.Image, pixel_size_um: float) -> tuple[np.ndarray, float]:
    """([H, W, 3] float32 in [0, 1] at :data:`DETECT_UM`, the factor from frame to detection pixels)."""
    if image.width * image.height > MAX_FIELD_PIXELS:
        raise MarrowscopeError(f"a field of {image.width} x {image.height} px is larger than the "
                               f"{MAX_FIELD_PIXELS // 1_000_000} megapixels counted at once; cut the scan into "
                               f"frames of at most 8,000 x 8,000 px.")
    factor = pixel_size_um / DETECT_UM
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    # reduce() first: a box filter to within 2x, then one smooth resize (fast and free of aliasing on big frames)
    step = max(1, int(1 / factor) // 2)
    small = image.reduce(step) if step > 1 else image
    small = small.resize(size, Image.BILINEAR) if small.size != size else small
    return np.asarray(small, dtype=np.float32) / 255.0, factor


def tile_origins(length: int, tile: int = TILE, overlap: int = OVERLAP) -> list[int]:
    """Start offsets of tiles covering 0..length with at least ``overlap`` px shared by neighbours."""
    if length <= tile:
        return [0]
    n = int(np.ceil((length - overlap) / (tile - overlap)))
    return [int(round(o)) for o in np.linspace(0, length - tile, n)]


def tiles(array: np.ndarray, tile: int = TILE, overlap: int = OVERLAP
          ) -> Iterator[tuple[np.ndarray, int, int, tuple[float, float, float, float]]]:
    """([tile, tile, 3] padded with :data:`PAD_VALUE`, x offset, y offset, the core it owns, in the array's
    pixels) for every tile. The cores of all tiles partition the array."""
    h, w = array.shape[:2]
    xs, ys = tile_origins(w, tile, overlap), tile_origins(h, tile, overlap)

    def core(origins: list[int], i: int, length: int) -> tuple[float, float]:
        lo = 0.0 if i == 0 else (origins[i - 1] + tile + origins[i]) / 2  # halfway through the shared part
        hi = float(length) if i == len(origins) - 1 else (origins[i] + tile + origins[i + 1]) / 2
        return lo, hi

    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            part = array[y: y + tile, x: x + tile]
            if part.shape[:2] != (tile, tile):
                padded = np.full((tile, tile, 3), PAD_VALUE, np.float32)
                padded[: part.shape[0], : part.shape[1]] = part
                part = padded
            (cx0, cx1), (cy0, cy1) = core(xs, i, w), core(ys, j, h)
            yield part, x, y, (cx0, cy0, cx1, cy1)


class Detector:
    """The trained white-cell detector of a model folder (its ``detector/`` folder).

    ``threshold``: the score above which a box counts as a cell; by default the one the folder chose on
    its validation frames (the highest recall at precision ≥ 0.95).
    """

    name = "network"

    def __init__(self, folder: str | Path, backend: str = "auto", threshold: Optional[float] = None,
                 threads: Optional[int] = None):
        self.folder = Path(folder)
        cfg_path = self.folder / "config.json"
        if not cfg_path.is_file():
            raise MarrowscopeError(f"'{self.folder}' holds no detector (config.json is missing); train one with "
                                   f"`marrowscope train-detector`, or count with --detector classical.")
        self.config = json.loads(cfg_path.read_text())
        self.tile = int(self.config["tile"])
        self.threshold = float(self.config.get("threshold", 0.3) if threshold is None else threshold)
        onnx_file = self.folder / "model.onnx"
        self.session = self.net = None
        if backend in ("auto", "onnx") and onnx_file.is_file():
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
        elif backend == "onnx":
            raise MarrowscopeError(f"'{onnx_file}' is missing; `marrowscope train-detector` writes it beside the "
                                   "weights.")
        else:  # torch, torchvision and timm load only for this backend
            from marrowscope.core.detector_net import build_detector
            from marrowscope.core.model import read_state_dict

            self.net = build_detector(self.config["architecture"], self.tile)
            self.net.load_state_dict(read_state_dict(self.folder / "model.safetensors"))
            self.net.eval()

    def tile_boxes(self, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[T, T, 3] in [0, 1] -> (boxes [K, 4] in tile pixels, scores [K])."""
        if self.session is None:
            from marrowscope.core.detector_net import network_tile_boxes

            return network_tile_boxes(self.net, tile)
        boxes, scores = self.session.run(None, {"image": np.ascontiguousarray(tile.transpose(2, 0, 1)[None])})
        return boxes, scores


class NucleusDetector:
    """The classical baseline: white cells are where the nucleus stain is.

    Nuclei are the bluest and darkest pixels of a smear (red cells are pink, background pale). The
    stain measure is blue minus the mean of red and green; a frame's threshold is the larger of a fixed
    floor and half its 99.5th percentile, so a frame without a white cell finds none. The mask is
    closed over 2 µm (a neutrophil's lobes become one nucleus), touching nuclei are split at the
    watershed of the distance transform, and each box is grown by the cytoplasm around the nucleus.
    """

    name = "classical"
    tile = TILE
    FLOOR = 0.16  # stain measure (0-1 scale) below which no pixel is nucleus, whatever the frame
    MIN_AREA_UM2 = 12.0  # a smaller blob is a platelet or stain debris (a lymphocyte nucleus is ~40 µm²)
    GROW = 1.35  # the cell box over the nucleus box: the cytoplasm around it

    def __init__(self, threshold: Optional[float] = None):
        self.threshold = 0.0 if threshold is None else threshold

    def tile_boxes(self, tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from scipy import ndimage as ndi

        stain = tile[..., 2] - (tile[..., 0] + tile[..., 1]) / 2
        cut = max(self.FLOOR, 0.5 * float(np.percentile(stain, 99.5)))
        mask = ndi.binary_closing(stain > cut, iterations=max(1, round(2.0 / DETECT_UM / 2)))
        mask = ndi.binary_fill_holes(ndi.binary_opening(mask))
        dist = ndi.distance_transform_edt(mask)
        # one marker per nucleus: maxima of the distance at least ~one nucleus radius (3 µm) apart
        peaks = (dist == ndi.maximum_filter(dist, size=max(3, round(6.0 / DETECT_UM)))) & (dist >= 1.5 / DETECT_UM)
        markers, n = ndi.label(peaks)
        if n == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        # watershed_ift floods from the markers over the inverted distance (uint8), inside the mask only
        landscape = (255 * (1 - dist / max(dist.max(), 1))).astype(np.uint8)
        markers = markers.astype(np.int32)
        markers[~mask] = -1
        regions = ndi.watershed_ift(landscape, markers)
        regions[~mask] = 0
        boxes, scores = [], []
        min_area = self.MIN_AREA_UM2 / DETECT_UM ** 2
        for k, sl in enumerate(ndi.find_objects(regions.clip(0)), 1):
            if sl is None:
                continue
            area = float((regions[sl] == k).sum())
            if area < min_area:
                continue
            y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, self.GROW * max(x1 - x0, y1 - y0) / 2
            boxes.append([cx - half, cy - half, cx + half, cy + half])
            scores.append(min(1.0, float(stain[sl][regions[sl] == k].mean()) / (2 * self.FLOOR)))
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32)


def find_cells(detector, image: Image.Image, scale: Scale, threshold: Optional[float] = None) -> list[Box]:
    """Every white cell ``detector`` finds in the frame above its threshold (or ``threshold``), in the
    frame's pixels, each from the one tile that owns its centre."""
    array, factor = to_detection_scale(image, scale.pixel_size_um)
    cut = detector.threshold if threshold is None else threshold
    found = []
    for part, x, y, (cx0, cy0, cx1, cy1) in tiles(array, detector.tile):
        boxes, scores = detector.tile_boxes(part)
        for (bx0, by0, bx1, by1), s in zip(boxes, scores):
            mx, my = x + (bx0 + bx1) / 2, y + (by0 + by1) / 2  # the centre, in the array's pixels
            if s < cut or not (cx0 <= mx < cx1 and cy0 <= my < cy1):
                continue
            # into the frame's pixels, clipped to it (a tile's padding is not the slide)
            fx0, fy0 = max(0.0, (bx0 + x) / factor), max(0.0, (by0 + y) / factor)
            fx1, fy1 = min(float(image.width), (bx1 + x) / factor), min(float(image.height), (by1 + y) / factor)
            if fx1 > fx0 and fy1 > fy0:
                found.append(Box(float(fx0), float(fy0), float(fx1), float(fy1), float(s)))
    return sorted(found, key=lambda b: (b.y0, b.x0))


def load_detector(model_dir: Path, kind: str = "auto", threshold: Optional[float] = None
                  ) -> "Detector | NucleusDetector":
    """The detector to count with: ``network`` (the model folder's trained one, else the bundled model's:
    finding white cells does not change when a classifier is retrained or adapted), ``classical``, or
    ``auto`` (the network where there is one, else the classical one)."""
    found = [f for f in (Path(model_dir) / DETECTOR_DIR, DEFAULT_MODEL / DETECTOR_DIR) if (f / "config.json").is_file()]
    if kind == "classical" or (kind == "auto" and not found):
        return NucleusDetector(threshold)
    if not found:
        raise MarrowscopeError(f"neither '{model_dir}' nor the bundled model holds a detector; train one with "
                               "`marrowscope train-detector --out MODEL/detector`, or count with --detector classical.")
    return Detector(found[0], threshold=threshold)

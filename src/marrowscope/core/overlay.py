"""A field's overlay: every detected white cell boxed and numbered in its class's colour, with a legend.

Cells cut by the frame's edge (not counted) get a dashed grey box; cells for review a second, inner
box, so a reader sees at a glance which calls a person must check.
"""

from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

MAX_SIDE = 2048  # an overlay of a large scan is drawn on a copy this size, so the PNG stays small
# Okabe-Ito colours: told apart by readers with colour-vision deficiency
PALETTE = ["#D55E00", "#E69F00", "#0072B2", "#009E73", "#CC79A7", "#7F7F7F", "#56B4E9", "#F0E442"]
NOT_COUNTED = "#BBBBBB"


def class_colours(classes: Sequence[str]) -> dict[str, str]:
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(classes)}


def draw_overlay(image: Image.Image, field, classes: Sequence[str]) -> Image.Image:
    """``image`` (the field) with ``field``'s cells (:class:`marrowscope.core.count.Field`) drawn on it."""
    f = min(1.0, MAX_SIDE / max(image.size))
    canvas = image.convert("RGB")
    if f < 1.0:
        canvas = canvas.resize((round(image.width * f), round(image.height * f)), Image.BILINEAR)
    width = max(2, round(max(canvas.size) / 300))
    font = ImageFont.load_default(size=max(12, round(max(canvas.size) / 40)))
    colours = class_colours(classes)
    # the legend sits in a white strip right of the field, so it never hides a cell
    entries = [(c, colours[c]) for c in classes] + [("not counted (edge)", NOT_COUNTED),
                                                    ("double box: for review", None)]
    strip = round(max(ImageDraw.Draw(canvas).textlength(t, font=font) for t, _ in entries) + font.size + 24)
    framed = Image.new("RGB", (canvas.width + strip, max(canvas.height, (font.size + 4) * len(entries) + 16)), "white")
    framed.paste(canvas, (0, 0))
    canvas = framed
    draw = ImageDraw.Draw(canvas)
    for cell in field.cells:
        b = [cell.box.x0 * f, cell.box.y0 * f, cell.box.x1 * f, cell.box.y1 * f]
        call = cell.prediction.call if cell.prediction is not None else None
        colour = colours.get(call, NOT_COUNTED) if cell.counted else NOT_COUNTED
        if cell.counted:
            draw.rectangle(b, outline=colour, width=width)
            if cell.prediction is not None and cell.prediction.decision != "accepted":
                inner = [b[0] + 2 * width, b[1] + 2 * width, b[2] - 2 * width, b[3] - 2 * width]
                if inner[2] > inner[0] and inner[3] > inner[1]:
                    draw.rectangle(inner, outline=colour, width=max(1, width // 2))
        else:
            _dashed(draw, b, colour, width)
        label = f"{cell.number} {call}" if call else str(cell.number)
        draw.text((b[0] + width, b[1] + width), label, fill=colour, font=font, stroke_width=2, stroke_fill="white")
    _legend(draw, canvas.width - strip + 4, entries, font)
    return canvas


def _dashed(draw: ImageDraw.ImageDraw, b: list[float], colour: str, width: int) -> None:
    x0, y0, x1, y1 = b
    dash = 4 * width
    for (ax, ay, bx, by) in ((x0, y0, x1, y0), (x1, y0, x1, y1), (x0, y1, x1, y1), (x0, y0, x0, y1)):
        length = max(abs(bx - ax), abs(by - ay))
        steps = max(1, int(length // (2 * dash)))
        for i in range(steps + 1):
            s, e = min(1.0, 2 * i * dash / max(length, 1)), min(1.0, (2 * i + 1) * dash / max(length, 1))
            draw.line((ax + (bx - ax) * s, ay + (by - ay) * s, ax + (bx - ax) * e, ay + (by - ay) * e),
                      fill=colour, width=width)


def _legend(draw: ImageDraw.ImageDraw, x0: int, entries: list[tuple[str, str]], font) -> None:
    line = font.size + 4
    for i, (text, colour) in enumerate(entries):
        y = 8 + i * line
        if colour is None:  # the review mark: a box within a box
            draw.rectangle([x0 + 4, y + 2, x0 + line - 2, y + line - 4], outline="black", width=1)
            draw.rectangle([x0 + 7, y + 5, x0 + line - 5, y + line - 7], outline="black", width=1)
        else:
            draw.rectangle([x0 + 4, y + 2, x0 + line - 2, y + line - 4], fill=colour)
        draw.text((x0 + line + 4, y), text, fill="black", font=font)

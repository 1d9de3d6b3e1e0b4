"""The one decoder: odd but valid images are handled, bad ones raise ImageDecodeError with a reason."""

import io

import numpy as np
import pytest
from PIL import Image

from marrowscope.core.errors import ImageDecodeError
from marrowscope.core.images import decode_image


def _png(im: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, "PNG", **kw)
    return b.getvalue()


def _jpeg(im: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, "JPEG", **kw)
    return b.getvalue()


def test_rgb_jpeg_path(tmp_path):
    p = tmp_path / "c.jpg"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(p)
    im = decode_image(p)
    assert im.mode == "RGB" and im.size == (40, 30)


def test_rgba_is_flattened_onto_white():
    im = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    out = decode_image(_png(im))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["1", "L", "P", "LA", "CMYK", "I;16"])
def test_modes_become_rgb(mode):
    im = Image.new(mode if mode != "I;16" else "I;16", (9, 7))
    data = _jpeg(im) if mode == "CMYK" else _png(im)
    out = decode_image(data)
    assert out.mode == "RGB" and out.size == (9, 7)


def test_sixteen_bit_range_is_scaled():
    arr = np.full((6, 6), 65535, np.uint16)
    out = decode_image(_png(Image.fromarray(arr)))
    assert np.asarray(out).min() == 255


def test_exif_rotation_is_applied():
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = decode_image(_jpeg(im, exif=exif))
    assert out.size == (20, 40)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 255, 0))]
    b = io.BytesIO()
    frames[0].save(b, "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(b.getvalue())
    r, g, _ = out.getpixel((5, 5))
    assert r > 200 and g < 50


def test_arrays():
    assert decode_image(np.zeros((5, 6), np.uint8)).size == (6, 5)
    assert np.asarray(decode_image(np.ones((4, 4, 3), np.float32))).max() == 255
    with pytest.raises(ImageDecodeError, match="array shape"):
        decode_image(np.zeros((4, 4, 2), np.uint8))


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"),
    (b"hello, not an image", "not an image format"),
    (b"%PDF-1.4\n1 0 obj << >> endobj", "not an image format"),
])
def test_bad_bytes(tmp_path, content, reason):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(p)


def test_truncated_jpeg():
    data = _jpeg(Image.effect_noise((64, 64), 50).convert("RGB"))
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_missing_path_and_folder(tmp_path):
    with pytest.raises(ImageDecodeError, match="does not exist"):
        decode_image(tmp_path / "nope.png")
    with pytest.raises(ImageDecodeError, match="is a folder"):
        decode_image(tmp_path)


def test_decompression_bomb_is_refused_before_decoding():
    data = _png(Image.new("1", (20000, 20000)))  # tiny file, 400 megapixels
    with pytest.raises(ImageDecodeError, match="above the limit"):
        decode_image(data)


def test_one_pixel_image():
    assert decode_image(_png(Image.new("RGB", (1, 1)))).size == (1, 1)

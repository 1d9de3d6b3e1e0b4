"""Fuzz the one decoding entry point: whatever the bytes, only ImageDecodeError may escape."""

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from marrowscope.core.errors import ImageDecodeError
from marrowscope.core.images import decode_image


def _valid(fmt: str) -> bytes:
    b = io.BytesIO()
    Image.effect_noise((24, 24), 40).convert("RGB" if fmt != "GIF" else "L").save(b, fmt)
    return b.getvalue()


SEEDS = [_valid(f) for f in ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP")]


def _check(data: bytes) -> None:
    try:
        im = decode_image(data)
    except ImageDecodeError as exc:
        assert str(exc)
    else:
        assert im.mode == "RGB" and im.size[0] >= 1 and im.size[1] >= 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes(data):
    _check(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=12),
       st.integers(0, 10_000))
def test_mutated_valid_images(seed, flips, cut):
    data = bytearray(seed)
    for pos, value in flips:
        data[pos % len(data)] = value
    _check(bytes(data[: max(1, len(data) - cut % len(data))]))

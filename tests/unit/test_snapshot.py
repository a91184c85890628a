"""The thumbnail encoder (actors/snapshot.py): PyAV's MJPEG, no Redis, no Ray."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from actors.snapshot import encode_jpeg


def picture(h: int, w: int) -> np.ndarray:
    """A smooth RGB picture: red grows left to right, green top to bottom, blue constant."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), np.full_like(x, 90)], -1).astype(np.uint8)


def decode(jpeg: bytes) -> np.ndarray:
    with av.open(io.BytesIO(jpeg)) as c:
        return next(c.decode(video=0)).to_ndarray(format="rgb24")


def test_a_frame_becomes_a_jpeg_that_decodes_to_the_same_picture():
    rgb = picture(64, 64)
    jpeg = encode_jpeg(rgb)
    assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"  # SOI ... EOI
    back = decode(jpeg)
    assert back.shape == (64, 64, 3)
    assert np.abs(back.astype(int) - rgb.astype(int)).mean() < 6, "close to the original"
    assert len(jpeg) < 8_000, len(jpeg)


@pytest.mark.parametrize("h, w, want", [(360, 640, (180, 320)), (224, 224, (224, 224)), (63, 99, (62, 98))])
def test_a_wide_frame_is_scaled_down_to_the_width_and_sizes_are_even(h, w, want):
    assert decode(encode_jpeg(picture(h, w), max_width=320)).shape[:2] == want


def test_anything_but_an_rgb_frame_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        encode_jpeg(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="float32"):
        encode_jpeg(np.zeros((8, 8, 3), np.float32))

"""Decoding untrusted uploads: formats, modes, orientation, and every way bytes can be bad."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from PIL import Image

from service.errors import CorruptImage, PayloadTooLarge, UnsupportedMediaType
from service.images import decode
from tests.helpers import encode

LIMIT = 40_000_000
WHITE = (255, 255, 255)


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=2), mode="RGB")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_allowed_formats_decode_to_rgb(fmt):
    img = decode(encode(gradient(), fmt), LIMIT)
    assert img.mode == "RGB" and img.size == (64, 48)


@pytest.mark.parametrize("fmt", ["TIFF", "ICO", "PPM", "TGA"])
def test_other_formats_are_refused_by_sniffing(fmt):
    data = encode(gradient(32, 32), fmt)
    with pytest.raises(UnsupportedMediaType, match="JPEG, PNG, WebP, GIF, BMP"):
        decode(data, LIMIT)


def test_rgba_alpha_is_composited_on_the_background():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    out = np.asarray(decode(encode(rgba, "PNG"), LIMIT, background=(10, 20, 30)))
    assert tuple(out[1, 1]) == (10, 20, 30)
    assert tuple(out[0, 0]) == (0, 0, 255)


def test_half_transparent_la_blends():
    la = Image.new("LA", (2, 2), (0, 128))
    out = np.asarray(decode(encode(la, "PNG"), LIMIT, background=WHITE))
    assert abs(int(out[0, 0, 0]) - 127) <= 1


def test_palette_with_and_without_transparency():
    p = gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert decode(encode(p, "PNG"), LIMIT).mode == "RGB"
    pt = p.copy()
    pt.info["transparency"] = 0
    out = decode(encode(pt, "PNG", transparency=0), LIMIT, background=(1, 2, 3))
    assert (np.asarray(out) == (1, 2, 3)).all(axis=2).any()


def test_greyscale_cmyk_and_16_bit():
    assert decode(encode(gradient().convert("L"), "PNG"), LIMIT).mode == "RGB"
    assert decode(encode(gradient().convert("CMYK"), "JPEG"), LIMIT).mode == "RGB"
    deep = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))  # I;16 white
    out = np.asarray(decode(encode(deep, "PNG"), LIMIT))
    assert (out == 255).all(), "16-bit must be scaled, not clipped to 255 or wrapped"
    mid = Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16))
    assert (np.asarray(decode(encode(mid, "PNG"), LIMIT)) == 128).all()


def test_animated_gif_gives_the_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    out = np.asarray(decode(buffer.getvalue(), LIMIT))
    assert out[0, 0, 0] > 200 and out[0, 0, 1] < 50


def test_exif_orientation_is_applied():
    img = gradient(64, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode(encode(img, "JPEG", exif=exif.tobytes()), LIMIT)
    assert out.size == (48, 64)


def test_pixel_limit_is_checked_before_decoding():
    big = encode(Image.new("RGB", (300, 300)), "PNG")
    with pytest.raises(PayloadTooLarge, match="300x300 = 90000 pixels; the limit is 50000"):
        decode(big, 50_000)


def test_corrupt_and_empty():
    with pytest.raises(CorruptImage, match="no bytes"):
        decode(b"", LIMIT)
    data = encode(gradient(200, 200), "PNG")
    with pytest.raises(CorruptImage):
        decode(data[: len(data) // 2], LIMIT)
    for start in (20, 200, 1000):  # garbage in the headers, the tables, the scan data
        broken = bytearray(encode(gradient(200, 200), "JPEG"))
        broken[start : start + 150] = b"\xff" * 150
        # Whatever the decoder makes of it: a service error (4xx) or an RGB image, nothing else.
        with contextlib.suppress(CorruptImage, UnsupportedMediaType):
            assert decode(bytes(broken), LIMIT).mode == "RGB"

"""Decoding untrusted uploads: formats, modes, orientation, and every way bytes can be bad."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from PIL import Image

from service.errors import CorruptImage, PayloadTooLarge, UnprocessableImage, UnsupportedMediaType
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


def test_rgb_and_16_bit_png_transparency_is_composited_like_greyscale():
    """tRNS on RGB (a colour key) and on 16-bit greyscale marks pixels transparent, as on L."""
    rgb = Image.new("RGB", (4, 4), (255, 0, 0))
    rgb.putpixel((0, 0), (0, 0, 255))
    out = np.asarray(decode(encode(rgb, "PNG", transparency=(255, 0, 0)), LIMIT, (1, 2, 3)))
    assert tuple(out[1, 1]) == (1, 2, 3)  # the keyed red is transparent
    assert tuple(out[0, 0]) == (0, 0, 255)
    deep = np.full((4, 4), 1000, dtype=np.uint16)
    deep[0, 0] = 65535
    grey16 = encode(Image.fromarray(deep), "PNG", transparency=1000)
    out = np.asarray(decode(grey16, LIMIT, (1, 2, 3)))
    assert tuple(out[1, 1]) == (1, 2, 3)
    assert tuple(out[0, 0]) == (255, 255, 255)
    grey8 = encode(Image.new("L", (4, 4), 7), "PNG", transparency=7)
    assert tuple(np.asarray(decode(grey8, LIMIT, (1, 2, 3)))[2, 2]) == (1, 2, 3)


def test_an_image_without_an_orientation_tag_is_not_copied(monkeypatch):
    """exif_transpose returns a copy even when there is nothing to rotate: one more full-size
    image per upload for nothing."""
    copies = []
    copy = Image.Image.copy

    def counted_copy(self):
        copies.append(self.size)
        return copy(self)

    monkeypatch.setattr(Image.Image, "copy", counted_copy)
    assert decode(encode(gradient(640, 480), "PNG"), LIMIT).size == (640, 480)
    assert decode(encode(gradient(640, 480), "JPEG"), LIMIT).size == (640, 480)
    assert copies == []


# Where the stored top-left corner is shown, per EXIF orientation (the TIFF 6.0 definitions).
SHOWN_AT = {1: "top-left", 2: "top-right", 3: "bottom-right", 4: "bottom-left",
            5: "top-left", 6: "top-right", 7: "bottom-right", 8: "bottom-left"}  # fmt: skip


@pytest.mark.parametrize("orientation", list(SHOWN_AT))
def test_every_exif_orientation_turns_the_right_way(orientation):
    """The direction is checked, not only the size swap."""
    img = Image.new("RGB", (64, 48), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 16, 16))  # white square at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = np.asarray(decode(encode(img, "PNG", exif=exif.tobytes()), LIMIT)).mean(axis=2)
    assert out.shape == ((48, 64) if orientation <= 4 else (64, 48))
    vertical, horizontal = SHOWN_AT[orientation].split("-")
    row = 0 if vertical == "top" else -1
    col = 0 if horizontal == "left" else -1
    assert out[row, col] == 255 and (out > 128).sum() == 16 * 16


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming width x height, with one tiny IDAT."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(("width", "height"), [(1, 40_000_000), (40_000_000, 1), (20, 2000)])
def test_extreme_aspect_ratios_are_refused_from_the_header(width, height):
    """Decoding a 1-pixel-wide strip of 40 M rows costs seconds for nothing the model can use."""
    with pytest.raises(UnprocessableImage, match=r"aspect ratio .*MAX_ASPECT_RATIO\) is 50"):
        decode(png_header_only(width, height), LIMIT, max_aspect_ratio=50)


def test_aspect_ratios_within_the_bound_decode():
    assert decode(encode(gradient(500, 10), "PNG"), LIMIT, max_aspect_ratio=50).size == (500, 10)

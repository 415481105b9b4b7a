"""Untrusted bytes -> an RGB Pillow image, or a clear 4xx.

* The decoder is chosen by sniffing the bytes, from an allowlist (JPEG, PNG, WebP, GIF, BMP): the
  client's Content-Type is not trusted and rarely used, CVE-prone decoders stay out of reach.
* Size and aspect ratio are checked from the header before any pixel is decoded; Pillow's
  decompression-bomb warning is raised as an error too.
* EXIF orientation is applied; every mode is converted on purpose (alpha composited on a fixed
  background, 16-bit scaled, palette expanded); animations give their first frame.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import (
    CorruptImage,
    PayloadTooLarge,
    UnprocessableImage,
    UnsupportedMediaType,
)

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError)


ORIENTATION = 0x0112
SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone, before any pixel is decoded; None if the bytes are
    not an image decode() would open (decode() then says why)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as img:
                return img.size
        except (UnidentifiedImageError, Image.DecompressionBombError, *_DECODE_ERRORS):
            return None


def decode(
    data: bytes,
    max_pixels: int,
    background: tuple[int, int, int] = (255, 255, 255),
    draft: Callable[[int, int], tuple[int, int]] | None = None,
    reserve: Callable[[int], None] | None = None,
    max_aspect_ratio: float | None = None,
) -> Image.Image:
    """Decode one upload. draft(width, height) -> (w, h): let a JPEG decode at a reduced scale that
    still covers (w, h) (much faster for large photos; the resize that follows does the rest).
    reserve(pixels) is called after the header check and before any pixel is decoded: it may
    refuse (a request's pixel budget, its deadline) by raising a ServiceError."""
    return decode_sized(data, max_pixels, background, draft, reserve, max_aspect_ratio)[0]


def decode_sized(
    data: bytes,
    max_pixels: int,
    background: tuple[int, int, int] = (255, 255, 255),
    draft: Callable[[int, int], tuple[int, int]] | None = None,
    reserve: Callable[[int], None] | None = None,
    max_aspect_ratio: float | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """decode(), and the image's (width, height) after EXIF orientation at full scale: with a
    draft decode the returned image is smaller than that."""
    if not data:
        raise CorruptImage("empty image: the upload has no bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except UnidentifiedImageError as exc:
            raise UnsupportedMediaType(
                "not an image in a supported format (JPEG, PNG, WebP, GIF, BMP)"
            ) from exc
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise PayloadTooLarge(f"image too large: {exc}") from exc
        except _DECODE_ERRORS as exc:
            raise CorruptImage(f"corrupt or truncated image: {exc}") from exc
        width, height = img.size
        if width <= 0 or height <= 0:
            raise CorruptImage("image has no pixels")
        if width * height > max_pixels:
            raise PayloadTooLarge(
                f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
            )
        ratio = max(width, height) / min(width, height)
        if max_aspect_ratio is not None and ratio > max_aspect_ratio:
            raise UnprocessableImage(
                f"image is {width}x{height}: aspect ratio {ratio:.0f}:1; the limit "
                f"(MAX_ASPECT_RATIO) is {max_aspect_ratio:g}"
            )
        if reserve is not None:
            reserve(width * height)
        try:
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", draft(width, height))
            img.seek(0)  # animated GIF/WebP: the first frame only
            img.load()
            orientation = img.getexif().get(ORIENTATION, 1)
            turns = isinstance(orientation, int) and 2 <= orientation <= 8
            # exif_transpose copies even when there is nothing to turn: call it only when needed.
            upright = ImageOps.exif_transpose(img) if turns else img
            size = (height, width) if turns and orientation in SWAPS_SIDES else (width, height)
            return to_rgb(upright, background), size
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise PayloadTooLarge(f"image too large: {exc}") from exc
        except _DECODE_ERRORS as exc:
            raise CorruptImage(f"corrupt or truncated {img.format} image: {exc}") from exc


def to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    mode = img.mode
    if "transparency" in img.info and (mode == "RGB" or mode.startswith("I")):
        return _colour_key_to_rgb(img, background)
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    elif mode in ("PA", "LA", "La", "RGBa") or (mode == "L" and "transparency" in img.info):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":  # pasted through its own alpha: two full-size images, not four
        base = Image.new("RGB", img.size, background)
        base.paste(img, mask=img)
        return base
    if mode.startswith("I") or mode == "F":
        return _high_bit_depth_to_rgb(img)
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, RGBX, ...


def _high_bit_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit (I;16*), 32-bit int (I) and float (F) greyscale to 8-bit: scaled, not clipped."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) > 255):
        arr = arr / 257.0  # 0-65535 -> 0-255
    elif img.mode == "F" and arr.max(initial=0) <= 1.0:
        arr = arr * 255.0
    grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _colour_key_to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """PNG tRNS on RGB or 16-bit greyscale: pixels equal to the key colour are transparent."""
    key = img.info.pop("transparency")
    arr = np.asarray(img)
    rgb = np.array(to_rgb(img, background))  # the key is gone: this converts without it
    if img.mode == "RGB" and isinstance(key, tuple) and len(key) == 3:
        mask = (arr == np.array(key)).all(axis=2)
    elif img.mode != "RGB" and isinstance(key, int):
        mask = arr == key
    else:  # a malformed key is ignored, as viewers do
        mask = np.zeros(arr.shape[:2], dtype=bool)
    rgb[mask] = background
    return Image.fromarray(rgb, mode="RGB")

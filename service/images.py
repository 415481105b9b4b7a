"""Untrusted bytes -> an RGB Pillow image, or a clear 4xx.

* The decoder is chosen by sniffing the bytes, from an allowlist (JPEG, PNG, WebP, GIF, BMP): the
  client's Content-Type is not trusted and rarely used, CVE-prone decoders stay out of reach.
* Size is checked from the header before any pixel is decoded; Pillow's decompression-bomb
  warning is raised as an error too.
* EXIF orientation is applied; every mode is converted on purpose (alpha composited on a fixed
  background, 16-bit scaled, palette expanded); animations give their first frame.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import CorruptImage, PayloadTooLarge, UnsupportedMediaType

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError)


def decode(
    data: bytes,
    max_pixels: int,
    background: tuple[int, int, int] = (255, 255, 255),
    draft: Callable[[int, int], tuple[int, int]] | None = None,
) -> Image.Image:
    """Decode one upload. draft(width, height) -> (w, h): let a JPEG decode at a reduced scale that
    still covers (w, h) (much faster for large photos; the resize that follows does the rest)."""
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
        try:
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", draft(width, height))
            img.seek(0)  # animated GIF/WebP: the first frame only
            img.load()
            upright = ImageOps.exif_transpose(img)
            return to_rgb(upright, background)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise PayloadTooLarge(f"image too large: {exc}") from exc
        except _DECODE_ERRORS as exc:
            raise CorruptImage(f"corrupt or truncated {img.format} image: {exc}") from exc


def to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    elif mode in ("PA", "LA", "La", "RGBa") or (mode == "L" and "transparency" in img.info):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        base = Image.new("RGBA", img.size, (*background, 255))
        return Image.alpha_composite(base, img).convert("RGB")
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

"""Rollout grid -> what a person looks at: a 0-1 grid, or the heat overlaid on the upload.

The model saw only the centre crop, so the heat is drawn over that box of the original image and
the rest is dimmed (the model never saw it).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from service.colormaps import lut
from service.encode import encode
from service.preprocess import CropBox

OUTSIDE_CROP_BRIGHTNESS = 0.5
_DIM = [round(v * OUTSIDE_CROP_BRIGHTNESS) for v in range(256)]  # per-channel LUT


def normalise(grid: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (float32); a constant grid becomes all zeros."""
    grid = grid.astype(np.float32)
    low, high = float(grid.min()), float(grid.max())
    if high - low <= 0:
        return np.zeros_like(grid)
    return (grid - low) / (high - low)


def display_copy(img: Image.Image, max_side: int) -> Image.Image:
    """The image at most max_side on its longer side (the overlay never needs more)."""
    width, height = img.size
    scale = max_side / max(width, height)
    if scale >= 1.0:
        return img
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return img.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)


def overlay_encoded(
    image_format: str,
    display: Image.Image,
    original_size: tuple[int, int],
    grid01: np.ndarray,
    box: CropBox,
    colormap: str,
    alpha: float,
    max_side: int,
) -> bytes:
    """overlay(...) encoded as png, jpeg or webp (service/encode.py)."""
    return encode(
        overlay(display, original_size, grid01, box, colormap, alpha, max_side), image_format
    )


def overlay(
    display: Image.Image,
    original_size: tuple[int, int],
    grid01: np.ndarray,
    box: CropBox,
    colormap: str,
    alpha: float,
    max_side: int,
) -> Image.Image:
    """The heat over the region the model saw, the rest dimmed. box is in original pixels;
    display is the (possibly already reduced) original image.

    Every full-size pass is a Pillow C operation on uint8 (a LUT to dim, a palette to colour,
    blend, paste): the float32 numpy version took 71 ms at 2048x1536, this one 12 ms, within one
    grey level of it (docs/benchmarks.md)."""
    base = display_copy(display, max_side)
    scale = base.width / original_size[0]
    left = max(0, round(box.left * scale))
    top = max(0, round(box.top * scale))
    right = min(base.width, max(left + 1, round(box.right * scale)))
    bottom = min(base.height, max(top + 1, round(box.bottom * scale)))
    heat = Image.fromarray(grid01.astype(np.float32), mode="F").resize(
        (right - left, bottom - top), Image.Resampling.BILINEAR
    )
    index = np.clip(np.rint(np.asarray(heat) * 255.0), 0, 255).astype(np.uint8)
    colours = Image.fromarray(index, mode="L").convert("P")
    colours.putpalette(lut(colormap).tobytes())
    out = base.point(_DIM * 3)
    seen = base.crop((left, top, right, bottom))
    out.paste(Image.blend(seen, colours.convert("RGB"), alpha), (left, top))
    return out

"""The model's eval preprocessing, exactly as timm does it, from model.json: resize the shorter
side to size / crop_pct with the model's interpolation, centre-crop to size, uint8 CHW.

Mirrors timm.data.transforms_imagenet_eval (crop_mode "center"): torchvision Resize(int) for square
inputs, timm ResizeKeepRatio for non-square ones, torchvision CenterCrop. Normalisation is inside
the ONNX graph. tests/service/test_preprocess.py measures parity against timm itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Past this multiple of the model input area, only the crop region is resized (see preprocess).
FULL_RESIZE_MAX_AREA = 16  # 16:1 strips still exact; at 224 px that is 2.4 MB of pixels

PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Spec:
    """What the model expects; built from model.json's "preprocessing" section."""

    height: int
    width: int
    interpolation: str
    crop_pct: float

    @classmethod
    def from_metadata(cls, pre: dict) -> Spec:
        if pre.get("crop_mode", "center") != "center":
            raise ValueError(f"crop_mode {pre['crop_mode']!r} is not supported")
        if pre["interpolation"] not in PIL_FILTERS:
            raise ValueError(f"interpolation {pre['interpolation']!r} is not supported")
        height, width = pre["input_size"]
        return cls(int(height), int(width), pre["interpolation"], float(pre["crop_pct"]))


@dataclass(frozen=True)
class CropBox:
    """The region of the original image the model saw, in original pixel coordinates."""

    left: float
    top: float
    right: float
    bottom: float


def resized_size(width: int, height: int, spec: Spec) -> tuple[int, int]:
    """(w, h) after the resize step, with timm's rounding."""
    if spec.height == spec.width:  # torchvision Resize(int): shorter side to scale
        scale = math.floor(spec.height / spec.crop_pct)
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = scale, int(scale * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)
    # timm ResizeKeepRatio(longest=0): the smaller of the two ratios fits the target
    target_h = math.floor(spec.height / spec.crop_pct)
    target_w = math.floor(spec.width / spec.crop_pct)
    ratio = min(height / target_h, width / target_w)
    return round(width / ratio), round(height / ratio)


def _crop_span(resized: int, target: int) -> tuple[int, int, tuple[int, int]]:
    """One axis of torchvision's CenterCrop: (start, end) in resized pixels, and the zero padding
    (before, after) when the resized side is shorter than the target (crop_pct > 1)."""
    if resized < target:
        pad = target - resized
        return 0, resized, (pad // 2, (pad + 1) // 2)
    start = round((resized - target) / 2.0)  # torchvision: int(round(...)), half to even
    return start, start + target, (0, 0)


def preprocess(
    img: Image.Image, spec: Spec, crop_region_only: bool = False
) -> tuple[np.ndarray, CropBox]:
    """RGB image -> (uint8 [3, H, W], the crop box in original coordinates).

    Resize then crop, as timm does, while the resized image is at most FULL_RESIZE_MAX_AREA times
    the model's input (every normal photo: exact parity). Beyond that (thin strips, whose shorter
    side is scaled up to the model's size), or always with crop_region_only, only the crop region
    is resized: the work is bounded by the model's input, not the image (a 4:3 photo at 224 px:
    the resize costs about a third less). Pillow's float32 box coordinates make that path differ
    from timm: <= 0.5/255 on average for strips, <= 0.3/255 for photos, a few pixels by up to
    8/255 (tests/service/test_preprocess.py).
    """
    width, height = img.size
    new_w, new_h = resized_size(width, height, spec)
    x0, x1, pad_x = _crop_span(new_w, spec.width)
    y0, y1, pad_y = _crop_span(new_h, spec.height)
    sx, sy = width / new_w, height / new_h
    interpolation = PIL_FILTERS[spec.interpolation]
    small = new_w * new_h <= FULL_RESIZE_MAX_AREA * spec.width * spec.height
    whole = small and not crop_region_only
    if (new_w, new_h) == (width, height):
        kept = img.crop((x0, y0, x1, y1))
    elif whole:
        kept = img.resize((new_w, new_h), interpolation).crop((x0, y0, x1, y1))
    else:
        region = (x0 * sx, y0 * sy, min(width, x1 * sx), min(height, y1 * sy))
        kept = img.resize((x1 - x0, y1 - y0), interpolation, box=region)
    arr = _planes(kept)
    if pad_x != (0, 0) or pad_y != (0, 0):  # crop_pct > 1: torchvision pads with zeros
        arr = np.pad(arr, ((0, 0), pad_y, pad_x))
    # The box keeps the padded-array convention: on a padded axis the crop starts at 0.
    left, top = (x0 if pad_x == (0, 0) else 0), (y0 if pad_y == (0, 0) else 0)
    box = CropBox(left * sx, top * sy, (left + spec.width) * sx, (top + spec.height) * sy)
    return arr, box


def _planes(img: Image.Image) -> np.ndarray:
    """RGB image -> uint8 [3, H, W], a plane per channel: ~110 us at 224 px where transposing
    Pillow's interleaved pixels took ~180 us (numpy copies a strided uint8 axis byte by byte)."""
    out = np.empty((3, img.height, img.width), np.uint8)
    for i, channel in enumerate(img.split()):
        out[i] = np.asarray(channel)
    return out


def draft_request(width: int, height: int, spec: Spec) -> tuple[int, int]:
    """Smallest (w, h) a JPEG draft decode may shrink a width x height image to, so the resize
    still only shrinks, whichever way EXIF later rotates it."""
    upright = resized_size(width, height, spec)
    rotated = resized_size(height, width, spec)
    factor = max(upright[0] / width, upright[1] / height, rotated[0] / height, rotated[1] / width)
    return math.ceil(factor * width), math.ceil(factor * height)

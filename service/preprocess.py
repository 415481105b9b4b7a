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


def preprocess(img: Image.Image, spec: Spec) -> tuple[np.ndarray, CropBox]:
    """RGB image -> (uint8 [3, H, W], the crop box in original coordinates)."""
    width, height = img.size
    new_w, new_h = resized_size(width, height, spec)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), PIL_FILTERS[spec.interpolation])
    arr = np.asarray(img, dtype=np.uint8)
    if new_h < spec.height or new_w < spec.width:  # crop_pct > 1: torchvision pads with zeros
        pad_h, pad_w = max(0, spec.height - new_h), max(0, spec.width - new_w)
        arr = np.pad(arr, ((pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))
    top = round((arr.shape[0] - spec.height) / 2.0)  # torchvision: int(round(...)), half to even
    left = round((arr.shape[1] - spec.width) / 2.0)
    crop = arr[top : top + spec.height, left : left + spec.width]
    sx, sy = width / new_w, height / new_h
    box = CropBox(left * sx, top * sy, (left + spec.width) * sx, (top + spec.height) * sy)
    return np.ascontiguousarray(crop.transpose(2, 0, 1)), box


def draft_request(width: int, height: int, spec: Spec) -> tuple[int, int]:
    """Smallest (w, h) a JPEG draft decode may shrink a width x height image to, so the resize
    still only shrinks, whichever way EXIF later rotates it."""
    upright = resized_size(width, height, spec)
    rotated = resized_size(height, width, spec)
    factor = max(upright[0] / width, upright[1] / height, rotated[0] / height, rotated[1] / width)
    return math.ceil(factor * width), math.ceil(factor * height)

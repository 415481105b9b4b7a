"""What /explain sends besides JSON: image responses, their headers, their OpenAPI entry."""

from __future__ import annotations

from typing import Any

from service.encode import IMAGE_FORMATS
from service.schemas import ErrorResponse, Prediction

_HEADER_DOCS = {
    "X-Model": "the Triton model that answered, e.g. vit_explain_fp32",
    "X-Top-Label": "the top-1 label (non-ASCII characters as ?)",
    "X-Top-Class-Index": "the top-1 class index",
    "X-Top-Probability": "the top-1 softmax probability, 6 decimals",
    "Server-Timing": "ms per stage: decode, preprocess, triton, postprocess, render, total",
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}

IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON (output=json) or the heatmap over the image as PNG, JPEG or WebP "
        "(output=png|jpeg|webp, or the Accept header); image answers carry the headers below",
        "content": {f.media_type: _BINARY for f in IMAGE_FORMATS.values()},
        "headers": {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in _HEADER_DOCS.items()
        },
    },
    406: {"model": ErrorResponse, "description": "the Accept header excludes every output"},
}


def image_headers(model: str, top: Prediction, timings: dict[str, float]) -> dict[str, str]:
    return {
        "X-Model": model,
        "X-Top-Label": top.label.encode("ascii", "replace").decode(),
        "X-Top-Class-Index": str(top.class_index),
        "X-Top-Probability": f"{top.probability:.6f}",
        "Server-Timing": ", ".join(f"{k};dur={v}" for k, v in timings.items()),
        "Vary": "Accept",  # the same URL answers PNG, JPEG, WebP or JSON
    }

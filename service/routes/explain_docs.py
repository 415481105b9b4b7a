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
    "X-Explain-Method": "rollout or attribution (method=)",
    "X-Explained-Class-Index": "attribution only: the class the map explains",
    "X-Explained-Label": "attribution only: its label (non-ASCII characters as ?)",
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


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode()


def image_headers(
    model: str,
    top: Prediction,
    method: str,
    explained: Prediction | None,
    timings: dict[str, float],
) -> dict[str, str]:
    headers = {
        "X-Model": model,
        "X-Top-Label": _ascii(top.label),
        "X-Top-Class-Index": str(top.class_index),
        "X-Top-Probability": f"{top.probability:.6f}",
        "X-Explain-Method": method,
        "Server-Timing": ", ".join(f"{k};dur={v}" for k, v in timings.items()),
        "Vary": "Accept",  # the same URL answers PNG, JPEG, WebP or JSON
    }
    if explained is not None:
        headers["X-Explained-Class-Index"] = str(explained.class_index)
        headers["X-Explained-Label"] = _ascii(explained.label)
    return headers

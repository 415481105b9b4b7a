"""Rendered images -> bytes, in the format a client asked for with `output=` or the Accept header.

PNG is lossless but its encoding dominates render time for large overlays; JPEG and WebP are
several times faster to encode and smaller, and a heatmap loses nothing a person can see at these
qualities (docs/gateway.md has the measured numbers).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from PIL import Image

from service.errors import NotAcceptable


@dataclass(frozen=True)
class ImageFormat:
    media_type: str
    pillow_format: str
    options: dict[str, Any]


IMAGE_FORMATS = {  # in the server's order of preference when a client's Accept ties
    "png": ImageFormat("image/png", "PNG", {"compress_level": 1}),
    "webp": ImageFormat("image/webp", "WEBP", {"quality": 85, "method": 2}),
    "jpeg": ImageFormat("image/jpeg", "JPEG", {"quality": 90}),
}
DEFAULT_IMAGE_FORMAT = "png"
JSON_MEDIA_TYPE = "application/json"
OUTPUT_MEDIA_TYPES = {
    **{name: f.media_type for name, f in IMAGE_FORMATS.items()},
    "json": JSON_MEDIA_TYPE,
}


def encode(img: Image.Image, image_format: str) -> bytes:
    spec = IMAGE_FORMATS[image_format]
    buffer = io.BytesIO()
    img.save(buffer, format=spec.pillow_format, **spec.options)
    return buffer.getvalue()


def _media_ranges(accept: str) -> list[tuple[str, float]]:
    ranges = []
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0  # a malformed weight is not a preference
        ranges.append((media.lower(), q))
    return ranges


def _weight(media_type: str, ranges: list[tuple[str, float]]) -> tuple[float, int]:
    """(q, specificity) of the most specific range that matches (RFC 9110 12.5.1)."""
    kind = media_type.split("/")[0]
    best = (0.0, -1)
    for media, q in ranges:
        specificity = {media_type: 2, f"{kind}/*": 1, "*/*": 0}.get(media, -1)
        if specificity > best[1]:
            best = (q, specificity)
    return best


def negotiate(output: str | None, accept: str | None) -> str:
    """The output to answer with: `output=` when given, otherwise the best match for the Accept
    header (highest q, then the more specific range, then PNG, WebP, JPEG, JSON in that order);
    PNG when the client does not say. Raises NotAcceptable when Accept excludes all of them."""
    if output is not None:
        return output
    ranges = _media_ranges(accept or "")
    if not ranges:
        return DEFAULT_IMAGE_FORMAT
    candidates = []
    for preference, (name, media_type) in enumerate(OUTPUT_MEDIA_TYPES.items()):
        q, specificity = _weight(media_type, ranges)
        if q > 0:
            candidates.append((q, specificity, -preference, name))
    if not candidates:
        raise NotAcceptable(
            f"cannot answer with any type in Accept: {accept}; /explain sends "
            + ", ".join(OUTPUT_MEDIA_TYPES.values())
            + " (or choose one with output=png|jpeg|webp|json)"
        )
    return max(candidates)[3]

"""Schemathesis hooks: real, varied image files for the media types the gateway takes.

Registered for each allowed format (the multipart `file` parts declare them in the OpenAPI
`encoding`) and for `image/*` (the raw-body form). Random bytes would only ever test the 415 path;
these are valid files, so positive cases must be answered 200 (`positive_data_acceptance`).
Loaded by fuzz/schemathesis.toml (`hooks = "fuzz.api_hooks"`).
"""

from __future__ import annotations

import io
import re

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image

MAX_ASPECT = 50  # MAX_ASPECT_RATIO's default
FORMATS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
    "image/bmp": "BMP",
}
# Which modes each encoder writes (Pillow 13).
WRITES = {
    "JPEG": ("RGB", "L", "CMYK"),
    "PNG": ("RGB", "L", "RGBA", "P", "LA", "1", "I;16"),
    "WEBP": ("RGB", "RGBA"),
    "GIF": ("P", "L"),
    "BMP": ("RGB", "L", "P", "1"),
}


@st.composite
def image_file(draw: st.DrawFn, fmt: str) -> bytes:
    """One valid image in `fmt`: random size (1-96 px a side, aspect ratio at most 50:1), mode,
    content and options."""
    width = draw(st.integers(1, 96))
    # within the gateway's MAX_ASPECT_RATIO (50): a thinner strip is a documented 422
    height = draw(st.integers(max(1, -(-width // MAX_ASPECT)), min(96, width * MAX_ASPECT)))
    mode = draw(st.sampled_from(WRITES[fmt]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if draw(st.booleans()):  # smooth content as well as noise
        rgb = np.sort(rgb, axis=1)
    img = Image.fromarray(rgb, "RGB")
    if mode == "I;16":
        img = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)  # I;16
    elif mode != "RGB":
        img = img.convert(mode)
    options: dict[str, object] = {}
    if fmt == "JPEG":
        options = {"quality": draw(st.integers(5, 95)), "progressive": draw(st.booleans())}
        if draw(st.booleans()):
            exif = Image.Exif()
            exif[0x0112] = draw(st.integers(1, 8))
            options["exif"] = exif
    elif fmt == "PNG" and mode in ("P", "L", "RGB") and draw(st.booleans()):
        options["transparency"] = 0 if mode != "RGB" else (0, 0, 0)
    elif fmt == "GIF" and draw(st.booleans()):
        frames = [img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), img.rotate(180)]
        options = {"save_all": True, "append_images": frames, "duration": 20}
    elif fmt == "WEBP":
        options = {"lossless": draw(st.booleans())}
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


SERVED_PRECISIONS = ("fp32", "fp16", "int8")  # what the default repository builds
PRECISION_PATTERN = re.compile(r"[a-z0-9]{1,16}")


@schemathesis.hook
def map_case(_context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """Two adjustments, in every phase, that keep schema-valid cases valid for this gateway:

    * `precision` is a free pattern in the schema because what is served is only known at run
      time; a pattern-valid but unserved value is a documented 422 (tested in tests/service and
      the hostile corpus). It becomes a served one here; strings outside the pattern (negative
      cases) are left alone.
    * /explain's methods: target_class belongs to method=attribution, head_fusion and
      discard_ratio to rollout; a request that mixes them is a documented 422 (tests/service),
      a rule across parameters that OpenAPI cannot state. A valid target_class makes the case an
      attribution one (valid rollout parameters are dropped from it, and its precision is one
      with an attribution model); invalid values are left alone, so negative cases stay invalid.
    * With `encoding`, schemathesis puts one file where the schema has an array of files and then
      sends it without a filename, which makes it a plain form field, not a file. Wrapped back
      into a list, it is sent as a file part, as every HTTP client sends files.
    """
    query = case.query
    if query and isinstance(query.get("precision"), str):
        value = query["precision"]
        if PRECISION_PATTERN.fullmatch(value) and value not in SERVED_PRECISIONS:
            query["precision"] = SERVED_PRECISIONS[len(value) % len(SERVED_PRECISIONS)]
    if query and case.path == "/explain":
        _one_method(query)
    body = case.body
    if case.media_type == "multipart/form-data" and isinstance(body, dict):
        part = body.get("file")
        if part is not None and not isinstance(part, list):
            body["file"] = [part]
    return case


@schemathesis.hook
def before_add_examples(context: schemathesis.HookContext, examples: list) -> None:
    """The Examples phase runs no map_case (schemathesis 4.32): its cases, combined from the
    schema's examples (e.g. method=rollout with target_class=3), get the same adjustments here."""
    for case in examples:
        map_case(context, case)


def _valid_rollout_parameter(name: str, value: object) -> bool:
    if name == "head_fusion":
        return value in ("mean", "max", "min")
    try:
        return not isinstance(value, bool) and 0 <= float(value) < 1  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _one_method(query: dict) -> None:
    method = query.get("method", "rollout")
    if "target_class" in query and method == "rollout":
        query["method"] = method = "attribution"
    if method != "attribution":
        return
    for name in ("head_fusion", "discard_ratio"):
        if name in query and _valid_rollout_parameter(name, query[name]):
            del query[name]


def register() -> None:
    for media_type, fmt in FORMATS.items():
        schemathesis.openapi.media_type(media_type, image_file(fmt))
    any_format = st.sampled_from(sorted(FORMATS.values())).flatmap(image_file)
    schemathesis.openapi.media_type("image/*", any_format)


register()

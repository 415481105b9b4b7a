"""The hostile corpus: every kind of bad, odd or abusive request, each with the answer it must get.

Each Kind names the statuses it may be answered with and why; a set with more than one status
means the issue lets the gateway choose (e.g. refuse an over-budget resize with 413 or 422); 5xx is
never among them. Every kind must be answered within TIME_BOUND_S, whatever the model's input size:
tests/hardening/test_hostile_corpus.py sends all of them to a gateway over the default (32 px)
model and over a 224-px model spec, then checks the gateway is healthy and its memory did not grow.
`python -m tests.hardening.corpus` prints the table.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from tests.hardening import hostile_images as h

TIME_BOUND_S = 2.0
BODY_LIMIT = 20 * 1024 * 1024  # MAX_BODY_BYTES default
OK = frozenset({200})
TOO_MANY_PIXELS = frozenset({413})  # MAX_IMAGE_PIXELS / MAX_REQUEST_PIXELS, from the headers
BAD_SHAPE = frozenset({422})  # aspect ratio past MAX_ASPECT_RATIO (50): unprocessable_image


@dataclass
class Call:
    """One HTTP request; content may be bytes or an iterator (sent chunked)."""

    path: str = "/classify"
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | Iterator[bytes] | None = None
    files: list[tuple[str, tuple[str | None, bytes | str, str | None]]] | None = None
    raw: bytes | None = None  # sent as-is on a socket (for what httpx will not send)


def image(data: bytes, content_type: str = "image/png", path: str = "/classify", **params) -> Call:
    return Call(path, params, {"Content-Type": content_type}, data)


def files(*parts: tuple[str, bytes], path: str = "/classify", **params) -> Call:
    return Call(path, params, files=[("file", (name, data, "image/png")) for name, data in parts])


@dataclass(frozen=True)
class Kind:
    name: str
    expect: frozenset[int]
    why: str
    call: Callable[[], Call]
    check: Callable[[Any, str], None] | None = None  # (httpx.Response, spec) -> asserts


# --- checks on 200 answers -----------------------------------------------------------------------


def redness(png: bytes) -> np.ndarray:
    """Mean (red - other channels) per quadrant: top-left, top-right, bottom-left, bottom-right."""
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
    red = a[..., 0] - a[..., 1:].mean(axis=-1)
    hh, ww = red.shape[0] // 2, red.shape[1] // 2
    return np.array(
        [red[:hh, :ww].mean(), red[:hh, ww:].mean(), red[hh:, :ww].mean(), red[hh:, ww:].mean()]
    )


def upright_size(width: int, height: int) -> Callable[[Any, str], None]:
    def check(response: Any, spec: str) -> None:
        result = response.json()["results"][0]
        assert (result["width"], result["height"]) == (width, height), result
        if spec == "224":  # the probe model reports which quadrant of its input is red
            assert result["predictions"][0]["label"] == "red_top_left", result["predictions"]

    return check


def red_top_left_overlay(width: int, height: int) -> Callable[[Any, str], None]:
    def check(response: Any, _spec: str) -> None:
        overlay = Image.open(io.BytesIO(response.content))
        assert overlay.size == (width, height)
        quadrants = redness(response.content)
        assert quadrants[0] > 40 and quadrants[0] > 4 * np.abs(quadrants[1:]).max(), quadrants

    return check


def transparent_is_background(response: Any, _spec: str) -> None:
    """alpha=0 overlay: the crop shows the composited image; transparent pixels are white."""
    a = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=np.int16)
    centre_left = a[a.shape[0] // 2, a.shape[1] // 2 - a.shape[1] // 8]
    assert (centre_left >= 245).all(), f"transparent pixel shown as {centre_left}, not white"


def order_kept(count: int) -> Callable[[Any, str], None]:
    def check(response: Any, _spec: str) -> None:
        results = response.json()["results"]
        assert [r["filename"] for r in results] == [f"{i}.png" for i in range(count)]
        assert [r["index"] for r in results] == list(range(count))

    return check


# --- request builders ----------------------------------------------------------------------------


def good_png() -> bytes:
    return h.encode(h.photo(), "PNG")


def chunked(total: int, piece: int = 1 << 20) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"\0" * min(piece, total - sent)
        sent += piece


def multipart_raw(body: bytes, content_type: str) -> Call:
    return Call("/classify", {}, {"Content-Type": content_type}, body)


def malformed_boundary() -> Call:
    body = b'--real\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    body += good_png() + b"\r\n--real--\r\n"
    return multipart_raw(body, "multipart/form-data; boundary=other")


def no_boundary() -> Call:
    return multipart_raw(b"--x\r\n\r\n--x--\r\n", "multipart/form-data")


def unterminated_multipart() -> Call:
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    return multipart_raw(body + good_png()[:200], "multipart/form-data; boundary=b")


def raw_request(content_length: str, body: bytes = b"") -> Call:
    head = (
        "POST /classify HTTP/1.1\r\nHost: gateway\r\nContent-Type: image/png\r\n"
        f"Content-Length: {content_length}\r\nConnection: close\r\n\r\n"
    )
    return Call(raw=head.encode() + body)


def exif_kinds() -> list[Kind]:
    upright = h.quadrant_image(96, 64)
    kinds = []
    for o in range(1, 9):
        data = h.with_exif_orientation(upright, o)
        why = f"EXIF orientation {o}: the gateway (and the model) see the image upright"
        kinds.append(Kind(f"exif_orientation_{o}", OK, why, lambda d=data: image(d, "image/jpeg"),
                          upright_size(96, 64)))  # fmt: skip
        kinds.append(Kind(f"exif_orientation_{o}_overlay", OK, why + " (overlay, alpha=0)",
                          lambda d=data: image(d, "image/jpeg", "/explain", alpha=0),
                          red_top_left_overlay(96, 64)))  # fmt: skip
    return kinds


def kinds() -> list[Kind]:
    png = good_png()
    photo = h.photo()
    jpeg = h.encode(photo, "JPEG")
    bomb16 = h.palette_bomb()
    k = [
        # --- empty, tiny, wrong bytes
        Kind("empty_body", frozenset({400}), "no bytes", lambda: image(b"")),
        Kind("one_byte", frozenset({400, 415}), "1 byte cannot be an image",
             lambda: image(b"\x89")),
        Kind("text_as_png", frozenset({415}), "not an image", lambda: image(b"hello " * 50)),
        Kind("wrong_magic", frozenset({415}), "PNG with its signature broken",
             lambda: image(b"\x89PNX" + png[4:])),
        Kind("jpeg_labelled_png", OK, "the bytes decide, not Content-Type",
             lambda: image(jpeg, "image/png")),
        Kind("svg", frozenset({415}), "SVG is not an allowed format",
             lambda: image(b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
                           "image/svg+xml")),
        Kind("tiff", frozenset({415}), "TIFF decoder kept out of reach",
             lambda: image(h.encode(photo, "TIFF"), "image/tiff")),
        Kind("eps", frozenset({415}), "EPS (Ghostscript) kept out of reach",
             lambda: image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n", "image/eps")),
        Kind("ico", frozenset({415}), "ICO decoder kept out of reach",
             lambda: image(h.encode(photo, "ICO"), "image/x-icon")),
        # --- truncations and corruption
        Kind("truncated_png", frozenset({400}), "half a PNG", lambda: image(png[: len(png) // 2])),
        Kind("png_header_only", frozenset({400, 415}), "signature + IHDR, no pixel data",
             lambda: image(png[:33])),
        Kind("truncated_jpeg", frozenset({400}), "half a JPEG",
             lambda: image(jpeg[: len(jpeg) // 2], "image/jpeg")),
        Kind("jpeg_soi_eoi", frozenset({400, 415}), "JPEG markers and nothing else",
             lambda: image(b"\xff\xd8\xff\xd9", "image/jpeg")),
        Kind("png_bad_crc", frozenset({400, 415}), "IHDR checksum wrong",
             lambda: image(h.png_bad_crc(png))),
        Kind("truncated_gif", frozenset({400}), "GIF cut inside its first frame's pixels",
             lambda: image(h.encode(photo.convert("P"), "GIF")[:1200], "image/gif")),
        # --- polyglots
        Kind("jpeg_zip_polyglot", OK, "a JPEG with a ZIP appended is still that JPEG",
             lambda: image(jpeg + b"PK\x03\x04" + b"\0" * 64, "image/jpeg")),
        Kind("png_html_polyglot", OK, "HTML in a tEXt chunk is just metadata",
             lambda: image(h.png_with_chunk_before_iend(png, h.png_chunk(
                 b"tEXt", b"Comment\0<script>alert(1)</script>")))),
        Kind("pdf_jpeg_polyglot", frozenset({415}), "%PDF first: not a JPEG by its magic",
             lambda: image(b"%PDF-1.4\n" + jpeg, "image/jpeg")),
        # --- bombs by header (refused before any pixel is decoded)
        Kind("png_bomb_header", frozenset({413}), "IHDR claims 20000x20000",
             lambda: image(h.png_header_bomb(20_000, 20_000))),
        Kind("png_just_over_pixel_cap", frozenset({413}), "6400x6400 > 40 M pixels",
             lambda: image(h.png_header_bomb(6400, 6400))),
        Kind("gif_bomb_header", frozenset({413}), "GIF screen 65535x65535",
             lambda: image(h.gif_header_bomb(), "image/gif")),
        Kind("jpeg_bomb_header", frozenset({413}), "SOF claims 65500x65500",
             lambda: image(h.jpeg_header_bomb(), "image/jpeg")),
        Kind("bmp_bomb_header", frozenset({413}), "BMP header claims 30000x30000",
             lambda: image(h.bmp_header_bomb(), "image/bmp")),
        Kind("webp_bomb_header", frozenset({413}), "VP8X canvas 16384x16384",
             lambda: image(h.webp_header_bomb(), "image/webp")),
        # --- bombs by real pixels
        Kind("png_bomb_real_pixels", frozenset({413}), "8000x8000 real zeros (~200 KB)",
             lambda: image(h.png_real_pixels(8000, 8000))),
        Kind("palette_bomb", frozenset({200, 413}), "5 KiB 1-bit palette PNG, 6300x6300 pixels",
             lambda: image(bomb16)),
        Kind("palette_bomb_x16", TOO_MANY_PIXELS, "16 x 6300² in one request: decoded-pixel budget",
             lambda: files(*((f"{i}.png", bomb16) for i in range(16)))),
        Kind("png_text_bomb", frozenset({200, 400}), "zTXt inflating to 64 MiB",
             lambda: image(h.png_text_bomb())),
        # --- extreme aspect ratios, both ways (work amplification by shape)
        Kind("strip_1x4000", BAD_SHAPE, "85-byte 1x4000 PNG (was 9.5 s and 2.45 GB at 224 px)",
             lambda: image(h.png_real_pixels(1, 4000))),
        Kind("strip_4000x1", BAD_SHAPE, "4000x1: the other way",
             lambda: image(h.png_real_pixels(4000, 1))),
        Kind("strip_1x40M", BAD_SHAPE, "1x40,000,000 (OverflowError before)",
             lambda: image(h.png_real_pixels(1, 40_000_000))),
        Kind("strip_40Mx1", BAD_SHAPE, "40,000,000x1",
             lambda: image(h.png_real_pixels(40_000_000, 1))),
        Kind("strip_20x1000", OK, "50:1, at the bound: the crop region only is resized",
             lambda: image(h.png_real_pixels(20, 1000))),
        Kind("strip_1000x20", OK, "1:50, the other way",
             lambda: image(h.png_real_pixels(1000, 20))),
        Kind("strip_3x12000", BAD_SHAPE, "3x12000 greyscale",
             lambda: image(h.png_real_pixels(3, 12_000, colour_type=0))),
        Kind("one_pixel", OK, "1x1 is upscaled, not refused",
             lambda: image(h.encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"))),
        # --- modes and encodings
        Kind("grey16_png", OK, "I;16 scaled to 8 bit",
             lambda: image(h.encode(Image.fromarray(h.ramp16()), "PNG"))),
        Kind("rgb48_png", OK, "16 bits per channel RGB", lambda: image(h.png_rgb16())),
        Kind("cmyk_jpeg", OK, "CMYK converted",
             lambda: image(h.encode(photo.convert("CMYK"), "JPEG"), "image/jpeg")),
        Kind("progressive_jpeg", OK, "progressive scan",
             lambda: image(h.encode(photo, "JPEG", progressive=True), "image/jpeg")),
        Kind("palette_trns", OK, "P + tRNS composited",
             lambda: image(h.encode(photo.convert("P"), "PNG", transparency=0))),
        Kind("la_png", OK, "grey + alpha", lambda: image(h.encode(photo.convert("LA"), "PNG"))),
        Kind("bilevel_png", OK, "mode 1", lambda: image(h.encode(photo.convert("1"), "PNG"))),
        Kind("rgb_trns_png", OK, "RGB + tRNS: the transparent colour is composited on white",
             lambda: image(h.png_rgb_trns(), path="/explain", alpha=0), transparent_is_background),
        Kind("i16_trns_png", OK, "I;16 + tRNS: the key colour is composited on white too",
             lambda: image(h.png_i16_trns(), path="/explain", alpha=0), transparent_is_background),
        Kind("webp_lossless", OK, "lossless WebP",
             lambda: image(h.encode(photo, "WEBP", lossless=True), "image/webp")),
        Kind("many_frame_gif", OK, "1000 frames: the first only",
             lambda: image(h.many_frame_gif(), "image/gif")),
        Kind("many_frame_webp", OK, "200-frame animated WebP: the first only",
             lambda: image(h.many_frame_webp(), "image/webp")),
        Kind("bmp", OK, "plain BMP", lambda: image(h.encode(photo, "BMP"), "image/bmp")),
        # --- metadata
        Kind("corrupt_exif", frozenset({200, 400}), "EXIF IFD offset far outside the block",
             lambda: image(h.corrupt_exif(), "image/jpeg")),
        Kind("exif_huge_ifd", frozenset({200, 400}), "IFD claims 65535 entries",
             lambda: image(h.exif_huge_ifd(), "image/jpeg")),
        Kind("exif_orientation_9", OK, "orientation out of range is ignored",
             lambda: image(h.exif_bad_orientation(9), "image/jpeg")),
        Kind("icc_srgb", OK, "embedded sRGB ICC profile",
             lambda: image(h.srgb_icc_jpeg(), "image/jpeg")),
        Kind("icc_garbage", OK, "garbage ICC profile bytes", lambda: image(h.garbage_icc_png())),
        # --- multipart edge cases
        Kind("multipart_no_file", frozenset({400}), "a form field but no file",
             lambda: Call(files=[("note", (None, "no image", None))])),
        Kind("multipart_500_files", frozenset({413}), "500 files (limit 16)",
             lambda: files(*((f"{i}.png", png) for i in range(500)))),
        Kind("multipart_17_files", frozenset({413}), "one over max_files",
             lambda: files(*((f"{i}.png", png) for i in range(17)))),
        Kind("multipart_16_files_order", OK, "16 files > max_batch_size keep their order",
             lambda: files(*((f"{i}.png", h.encode(h.photo(seed=i), "PNG")) for i in range(16))),
             order_kept(16)),
        Kind("multipart_huge_field", frozenset({400, 413}), "a 3 MiB non-file field",
             lambda: Call(files=[("note", (None, "x" * (3 << 20), None)),
                                 ("file", ("a.png", png, "image/png"))])),
        Kind("multipart_many_fields", frozenset({400, 413}), "2000 small fields",
             lambda: Call(files=[(f"f{i}", (None, "v", None)) for i in range(2000)])),
        Kind("multipart_malformed_boundary", frozenset({400}), "boundary in header != body",
             malformed_boundary),
        Kind("multipart_no_boundary", frozenset({400}), "no boundary parameter", no_boundary),
        Kind("multipart_unterminated", frozenset({400}), "body ends inside a part",
             unterminated_multipart),
        Kind("multipart_empty_file", frozenset({400}), "a file part with no bytes",
             lambda: files(("a.png", b""))),
        Kind("multipart_odd_filename", OK, "filename with path, quotes and non-ASCII",
             lambda: files(('../../etc/pass"wd ü.png', png))),
        Kind("urlencoded", frozenset({415}), "a form, not an image",
             lambda: Call(headers={"Content-Type": "application/x-www-form-urlencoded"},
                          content=b"a=1")),
        Kind("no_content_type", frozenset({415}), "no Content-Type at all",
             lambda: Call(content=png)),
        # --- transport
        Kind("content_length_over_limit", frozenset({413}), "declared > 20 MiB",
             lambda: image(b"\0" * (BODY_LIMIT + 1))),
        Kind("chunked_over_limit", frozenset({413}), "chunked, stopped while streaming",
             lambda: image(chunked(BODY_LIMIT + (2 << 20)))),  # type: ignore[arg-type]
        Kind("content_length_not_a_number", frozenset({400}), "Content-Length: abc",
             lambda: raw_request("abc")),
        Kind("content_length_negative", frozenset({400}), "Content-Length: -1",
             lambda: raw_request("-1")),
        # --- query values
        Kind("top_k_zero", frozenset({422}), "top_k >= 1", lambda: image(png, top_k=0)),
        Kind("top_k_huge", frozenset({422}), "top_k 10**30", lambda: image(png, top_k=10**30)),
        Kind("top_k_text", frozenset({422}), "top_k=many", lambda: image(png, top_k="many")),
        Kind("precision_traversal", frozenset({422}), "precision=../../etc",
             lambda: image(png, precision="../../etc")),
        Kind("precision_unknown", frozenset({422}), "not served",
             lambda: image(png, precision="bf16")),
        Kind("precision_long", frozenset({422}), "1000 characters",
             lambda: image(png, precision="a" * 1000)),
        Kind("alpha_nan", frozenset({422}), "alpha=nan",
             lambda: image(png, "image/png", "/explain", alpha="nan")),
        Kind("alpha_inf", frozenset({422}), "alpha=inf",
             lambda: image(png, "image/png", "/explain", alpha="inf")),
        Kind("max_side_huge", frozenset({422}), "max_side=10**12",
             lambda: image(png, "image/png", "/explain", max_side=10**12)),
        Kind("head_fusion_bad", frozenset({422}), "head_fusion=avg",
             lambda: image(png, "image/png", "/explain", head_fusion="avg")),
        Kind("colormap_bad", frozenset({422}), "colormap=jet",
             lambda: image(png, "image/png", "/explain", colormap="jet")),
        Kind("include_png_bad", frozenset({422}), "include_png=perhaps",
             lambda: image(png, "image/png", "/explain", output="json", include_png="perhaps")),
        Kind("png_output_two_files", frozenset({422}), "output=png takes one image",
             lambda: files(("a.png", png), ("b.png", png), path="/explain")),
        # method= and target_class= (refused before any Triton call, so also where no
        # attribution model is served)
        Kind("method_unknown", frozenset({422}), "method=ATTRIBUTION (values are lower case)",
             lambda: image(png, "image/png", "/explain", method="ATTRIBUTION")),
        Kind("target_class_long", frozenset({422}), "target_class of 5,000 characters",
             lambda: image(png, "image/png", "/explain", method="attribution",
                           target_class="seven" * 1_000)),
        Kind("target_class_huge", frozenset({422}), "target_class=10**30",
             lambda: image(png, "image/png", "/explain", method="attribution",
                           target_class=10**30)),
        Kind("target_class_negative", frozenset({422}), "target_class=-1 (top-1: leave it out)",
             lambda: image(png, "image/png", "/explain", method="attribution", target_class=-1)),
        Kind("target_class_control_chars", frozenset({422}), "a label with NUL and RTL override",
             lambda: image(png, "image/png", "/explain", method="attribution",
                           target_class="\x00\u202e7")),
        Kind("target_class_with_rollout", frozenset({422}), "rollout is class-agnostic",
             lambda: image(png, "image/png", "/explain", target_class=3)),
        Kind("attribution_with_rollout_params", frozenset({422}), "head_fusion, discard_ratio",
             lambda: image(png, "image/png", "/explain", method="attribution", head_fusion="max",
                           discard_ratio=0.9)),
        Kind("unknown_parameter", OK, "unknown query parameters are ignored",
             lambda: image(png, nonsense="1")),
        # --- memory: overlays of many large images in one request
        Kind("explain_include_png_x8", OK, "8 x 2000x1500 with include_png and max_side=256",
             lambda: files(*((f"{i}.png", h.blocks(2000, 1500, seed=i)) for i in range(8)),
                           path="/explain", output="json", include_png="true", max_side=256)),
    ]  # fmt: skip
    return k + exif_kinds()


if __name__ == "__main__":
    print(f"| kind | status | why (each answered within {TIME_BOUND_S:g} s) |\n|---|---|---|")
    for kind in kinds():
        statuses = "/".join(str(s) for s in sorted(kind.expect))
        print(f"| {kind.name} | {statuses} | {kind.why} |")

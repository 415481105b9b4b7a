"""Every bad input gets its 4xx with a JSON message from the real gateway, which stays healthy."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.helpers import encode, png_bytes


def huge_png_header(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR claiming width x height, and one tiny IDAT: a pixel bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def good_png(heldout):
    return png_bytes(heldout.images[0])


def assert_error(response, status: int, code: str, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert fragment in body["error"]["message"]


CASES = {
    "not an image": (b"hello, world", "image/png", 415, "unsupported_media_type", "supported"),
    "tiff is not allowed": ("tiff", "image/tiff", 415, "unsupported_media_type", "JPEG, PNG"),
    "empty body": (b"", "image/png", 400, "corrupt_image", "no bytes"),
    "truncated jpeg": ("truncated", "image/jpeg", 400, "corrupt_image", "truncated"),
    "pixel bomb": ("bomb", "image/png", 413, "payload_too_large", "pixels"),
    "wrong content type": ("good", "text/plain", 415, "unsupported_media_type", "Content-Type"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("endpoint", ["/classify", "/explain"])
def test_raw_body_errors(http, good_png, heldout, case, endpoint):
    data, content_type, status, code, fragment = CASES[case]
    photo = Image.fromarray(heldout.images[0].transpose(1, 2, 0)).resize((256, 256))
    if data == "tiff":
        data = encode(photo, "TIFF")
    elif data == "truncated":
        data = encode(photo, "JPEG")[:600]
    elif data == "bomb":
        data = huge_png_header(20_000, 20_000)
    elif data == "good":
        data = good_png
    r = http.post(endpoint, content=data, headers={"Content-Type": content_type})
    assert_error(r, status, code, fragment)


def test_body_over_limit_by_content_length(http):
    r = http.post(
        "/classify", content=b"\0" * (20 * 1024 * 1024 + 1), headers={"Content-Type": "image/png"}
    )
    assert_error(r, 413, "payload_too_large", "exceeds")


def test_chunked_body_over_limit_is_stopped_while_streaming(http):
    def chunks():
        for _ in range(21):
            yield b"\0" * (1024 * 1024)

    r = http.post("/classify", content=chunks(), headers={"Content-Type": "image/png"})
    assert_error(r, 413, "payload_too_large", "exceeds")


def test_too_many_files(http, good_png):
    files = [("file", (f"{i}.png", good_png, "image/png")) for i in range(17)]
    assert_error(http.post("/classify", files=files), 413, "payload_too_large", "too many files")


def test_one_bad_file_among_several_is_named(http, good_png):
    files = [
        ("file", ("ok.png", good_png, "image/png")),
        ("file", ("broken.png", b"not really", "image/png")),
    ]
    r = http.post("/classify", files=files)
    assert_error(r, 415, "unsupported_media_type", "image 1 (broken.png)")


def test_multipart_without_a_file(http):
    r = http.post("/classify", files={"note": (None, "no image here")})  # a plain form field
    assert_error(r, 400, "bad_request", "no file")
    urlencoded = http.post("/classify", data={"note": "no image here"})
    assert_error(urlencoded, 415, "unsupported_media_type", "multipart/form-data")


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": "many"}, "top_k"),
        # Numbers as written: pydantic alone took these (schemathesis sent the no-break space).
        ({"top_k": "\u00a09"}, "top_k: must be a plain number"),
        ({"top_k": " 9"}, "top_k"),
        ({"top_k": "1_0"}, "top_k"),
        ({"precision": "bf16"}, "not served; available: fp16, fp32, int8"),
        ({"precision": "../etc"}, "precision"),
    ],
)
def test_bad_classify_parameters(http, good_png, params, fragment):
    r = http.post(
        "/classify", params=params, content=good_png, headers={"Content-Type": "image/png"}
    )
    assert_error(r, 422, "invalid_parameter", fragment)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"head_fusion": "avg"}, "head_fusion"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": "0.5\u00a0"}, "alpha"),
        ({"max_side": "\u2003100"}, "max_side"),
        ({"discard_ratio": "0_5"}, "discard_ratio"),
        ({"output": "gif"}, "output"),
        ({"colormap": "jet"}, "colormap"),
        ({"max_side": 3}, "max_side"),
        ({"method": "gradcam"}, "method: Input should be 'rollout' or 'attribution'"),
        ({"method": "attribution", "target_class": "10"}, "out of range: the model has 10 classes"),
        ({"method": "attribution", "target_class": "-1"}, "0-9 (leave target_class out for"),
        ({"method": "attribution", "target_class": "seven"}, "not a label of this model: give a"),
        ({"method": "attribution", "target_class": ""}, "target_class"),
        ({"method": "attribution", "head_fusion": "max"}, "does not take head_fusion"),
        ({"method": "attribution", "discard_ratio": 0.5}, "does not take discard_ratio"),
        ({"target_class": "3"}, "target_class needs method=attribution: rollout is class-agn"),
    ],
)
def test_bad_explain_parameters(http, good_png, params, fragment):
    r = http.post(
        "/explain", params=params, content=good_png, headers={"Content-Type": "image/png"}
    )
    assert_error(r, 422, "invalid_parameter", fragment)


def test_png_output_takes_one_image(http, good_png):
    files = [("file", (f"{i}.png", good_png, "image/png")) for i in range(2)]
    assert_error(http.post("/explain", files=files), 422, "invalid_parameter", "output=json")


def test_unknown_route_and_method_are_json(http):
    assert_error(http.get("/nope"), 404, "not_found", "Not Found")
    assert_error(http.get("/classify"), 405, "method_not_allowed", "Method Not Allowed")


def test_gateway_is_still_healthy_after_all_that(http, good_png, heldout):
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").status_code == 200
    r = http.post("/classify", content=good_png, headers={"Content-Type": "image/png"})
    assert r.status_code == 200
    assert r.json()["results"][0]["predictions"][0]["class_index"] == heldout.labels[0]
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert (
        http.post(
            "/classify",
            files=[("f", ("n.bmp", encode(Image.fromarray(noise), "BMP"), "image/bmp"))],
        ).status_code
        == 200
    )

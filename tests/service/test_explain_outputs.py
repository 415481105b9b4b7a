"""/explain answers PNG, JPEG, WebP or JSON (output= or the Accept header), and discard_ratio."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service import discard_ratio
from service.encode import negotiate
from service.errors import InvalidParameter, NotAcceptable
from service.triton import Variant
from tests.helpers import encode

BROWSER_IMG_ACCEPT = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"


@pytest.mark.parametrize(
    ("output", "accept", "expected"),
    [
        ("jpeg", "image/png", "jpeg"),  # output= wins over Accept
        (None, None, "png"),
        (None, "", "png"),
        (None, "*/*", "png"),
        (None, "image/*", "png"),
        (None, "image/webp", "webp"),
        (None, BROWSER_IMG_ACCEPT, "webp"),  # the exact type beats image/* at the same q
        (None, "application/json", "json"),
        (None, "application/json, */*;q=0.1", "json"),
        (None, "image/jpeg;q=0.5, image/png;q=0.4", "jpeg"),
        (None, "image/png;q=0, image/*", "webp"),  # q=0 excludes PNG despite the wildcard
        (None, "text/html, image/jpeg;q=0.2", "jpeg"),
        (None, "IMAGE/WEBP ; q=0.9", "webp"),
    ],
)
def test_output_is_negotiated_from_the_accept_header(output, accept, expected):
    assert negotiate(output, accept) == expected


@pytest.mark.parametrize("accept", ["text/html", "image/gif", "*/*;q=0", "image/png;q=abc"])
def test_nothing_acceptable_is_refused(accept):
    with pytest.raises(NotAcceptable, match="output=png"):
        negotiate(None, accept)


@pytest.fixture(scope="module")
def photo(heldout) -> bytes:
    img = Image.fromarray(heldout.images[3].transpose(1, 2, 0)).resize((300, 200))
    return encode(img, "PNG")


def explain(http, data: bytes, params=None, accept=None):
    headers = {"Content-Type": "image/png"}
    if accept is not None:
        headers["Accept"] = accept
    return http.post("/explain", params=params or {}, content=data, headers=headers)


@pytest.mark.parametrize(
    ("params", "accept", "media_type", "pillow_format"),
    [
        ({}, None, "image/png", "PNG"),
        ({"output": "jpeg"}, None, "image/jpeg", "JPEG"),
        ({"output": "webp"}, None, "image/webp", "WEBP"),
        ({}, "image/jpeg", "image/jpeg", "JPEG"),
        ({}, BROWSER_IMG_ACCEPT, "image/webp", "WEBP"),
    ],
)
def test_explain_answers_each_image_format_with_its_headers(
    http, heldout, photo, params, accept, media_type, pillow_format
):
    r = explain(http, photo, params, accept)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == media_type
    img = Image.open(io.BytesIO(r.content))
    assert img.format == pillow_format and img.size == (300, 200)
    assert int(r.headers["x-top-class-index"]) == heldout.labels[3]
    assert r.headers["x-top-label"] == str(heldout.labels[3])
    assert 0 < float(r.headers["x-top-probability"]) <= 1
    assert r.headers["x-model"] == "vit_explain_fp32"
    assert "render;dur=" in r.headers["server-timing"]
    assert r.headers["vary"] == "Accept"


def test_lossy_formats_show_the_same_overlay_as_png(http, photo):
    pixels = {
        fmt: np.asarray(
            Image.open(io.BytesIO(explain(http, photo, {"output": fmt}).content)).convert("RGB"),
            dtype=float,
        )
        for fmt in ("png", "jpeg", "webp")
    }
    for fmt in ("jpeg", "webp"):
        assert np.abs(pixels[fmt] - pixels["png"]).mean() < 3.0  # of 255: the same picture


def test_accept_json_and_refusals(http, photo):
    r = explain(http, photo, accept="application/json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json()["results"][0]["heatmap"]["discard_ratio"] == 0.0
    refused = explain(http, photo, accept="text/html")
    assert refused.status_code == 406
    assert refused.json()["error"]["code"] == "not_acceptable"
    two = http.post(
        "/explain",
        params={"output": "webp"},
        files=[("file", ("a.png", photo, "image/png")), ("file", ("b.png", photo, "image/png"))],
    )
    assert two.status_code == 422
    assert two.json()["error"]["message"] == (
        "output=webp takes one image; use output=json for several"
    )


@pytest.mark.parametrize("ratio", ["1", "1.5", "-0.1", "nan", "abc"])
def test_discard_ratio_outside_zero_to_one_is_refused(http, photo, ratio):
    r = explain(http, photo, {"discard_ratio": ratio})
    assert r.status_code == 422, r.text
    body = r.json()["error"]
    assert body["code"] == "invalid_parameter" and "discard_ratio" in body["message"]


def test_discard_ratio_input_is_sent_only_to_models_that_have_it():
    new = Variant("vit_explain_fp32", "explain", "fp32", 8, ("image", "discard_ratio"))
    old = Variant("vit_explain_fp32", "explain", "fp32", 8, ("image",))
    assert discard_ratio.triton_inputs(new, 0.0) == {"discard_ratio": 0.0}
    assert discard_ratio.triton_inputs(new, 0.9) == {"discard_ratio": np.float32(0.9)}
    assert discard_ratio.triton_inputs(old, 0.0) == {}
    # Valid for the API (r < 1) but 1.0 once FP32, which the model refuses (found by fuzzing).
    sent = discard_ratio.triton_inputs(new, 0.9999999999999998)["discard_ratio"]
    assert np.float32(sent) < 1.0 and sent == discard_ratio.FP32_BELOW_ONE
    with pytest.raises(InvalidParameter, match="rebuild the repository"):
        discard_ratio.triton_inputs(old, 0.5)


def served_with_discard_ratio(http) -> bool:
    models = {m["precision"]: m for m in http.get("/info").json()["explain"]}
    return models["fp32"]["discard_ratio"]


def grid(http, data: bytes, **params) -> np.ndarray:
    r = explain(http, data, {"output": "json", **params})
    assert r.status_code == 200, r.text
    heatmap = r.json()["results"][0]["heatmap"]
    assert heatmap["discard_ratio"] == params.get("discard_ratio", 0.0)
    return np.array(heatmap["grid"])


def test_discard_ratio_against_the_repository_being_served(http, photo):
    """With the input, 0 is the plain rollout and 0.9 changes the map; without it (a repository
    built before the input existed), 0 still works and anything else is a clear 422."""
    plain = grid(http, photo)
    assert np.array_equal(grid(http, photo, discard_ratio=0.0), plain)
    if served_with_discard_ratio(http):
        filtered = grid(http, photo, discard_ratio=0.9)
        # normalised, or all zeros where filtering cut every CLS-to-patch path
        assert filtered.min() == 0.0 and filtered.max() in (0.0, 1.0)
        assert np.abs(filtered - plain).max() > 0.05
        r = explain(http, photo, {"output": "json", "discard_ratio": 0.9999999999999998})
        assert r.status_code == 200, r.text  # not a 502 from the model's FP32 range check
    else:
        r = explain(http, photo, {"discard_ratio": 0.5})
        assert r.status_code == 422
        assert "rebuild the repository" in r.json()["error"]["message"]

"""/explain?method=attribution through the real stack: real encoded images over HTTP, the gateway,
Triton's vit_attribution_<precision> models built from the default repository."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.helpers import encode, png_bytes, start_gateway, stop_gateway

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MAP_CHANGE = 0.05  # of the 0-1 grid: more than float noise between two classes' maps


def multipart(files: list[bytes]):
    return [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(files)]


def explain_json(http, data: bytes, **params) -> dict:
    r = http.post(
        "/explain",
        params={"output": "json", **params},
        content=data,
        headers={"Content-Type": "image/png"},
    )
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


@pytest.fixture(scope="module")
def served(http) -> list[str]:
    precisions = http.get("/info").json()["attribution"]
    assert "fp32" in precisions, f"the repository serves no fp32 attribution model: {precisions}"
    return precisions


@pytest.fixture(scope="module")
def digit(heldout) -> bytes:
    """A held-out 7 as a real, non-square photo-sized PNG (the gateway crops and resizes it)."""
    index = int(np.flatnonzero(heldout.labels == 7)[0])
    img = Image.fromarray(heldout.images[index].transpose(1, 2, 0)).resize((96, 96))
    return encode(img, "PNG")


@pytest.fixture(scope="module")
def word_labels_gateway(triton, repository, tmp_path_factory):
    """The same Triton, a gateway whose model.json names the digits in words: a label is then
    not also an index, so looking labels up is tested, not the index parser twice."""
    root = tmp_path_factory.mktemp("word-labels")
    meta = json.loads((repository / "model.json").read_text())
    meta["labels"] = list(DIGITS)
    (root / "model.json").write_text(json.dumps(meta))
    gateway = start_gateway(triton.ports.grpc, root)
    try:
        with gateway.client() as client:
            yield client
    finally:
        stop_gateway(gateway)
        shutil.rmtree(root, ignore_errors=True)


def test_another_class_gets_another_map(http, served, digit):
    top1 = explain_json(http, digit, method="attribution")
    predicted = top1["predictions"][0]
    assert predicted["label"] == "7"
    assert top1["heatmap"]["method"] == "attribution"
    assert top1["heatmap"]["explained_class"] == predicted  # the top-1, with its probability
    runner_up = top1["predictions"][1]
    other = explain_json(http, digit, method="attribution", target_class=runner_up["class_index"])
    assert other["heatmap"]["explained_class"] == runner_up
    assert other["predictions"] == top1["predictions"]  # the class changes the map, not the logits
    a, b = np.array(top1["heatmap"]["grid"]), np.array(other["heatmap"]["grid"])
    assert a.shape == b.shape == (8, 8)
    assert a.min() == b.min() == 0.0 and a.max() == b.max() == 1.0  # normalised like rollout
    assert np.abs(a - b).max() > MAP_CHANGE


def test_naming_the_top1_is_the_default(http, served, digit):
    default = explain_json(http, digit, method="attribution")
    named = explain_json(
        http, digit, method="attribution", target_class=default["predictions"][0]["class_index"]
    )
    assert named["heatmap"]["grid"] == default["heatmap"]["grid"]


def test_a_label_and_its_index_give_the_same_map(word_labels_gateway, served, digit):
    by_label = explain_json(word_labels_gateway, digit, method="attribution", target_class="three")
    by_index = explain_json(word_labels_gateway, digit, method="attribution", target_class="3")
    assert by_label["heatmap"]["explained_class"]["label"] == "three"
    assert by_label["heatmap"]["explained_class"]["class_index"] == 3
    assert by_label["heatmap"]["grid"] == by_index["heatmap"]["grid"]
    assert by_label["predictions"][0]["label"] == "seven"
    r = word_labels_gateway.post(
        "/explain",
        params={"method": "attribution", "target_class": "Three"},
        content=digit,
        headers={"Content-Type": "image/png"},
    )
    assert r.status_code == 422 and "did you mean 'three'?" in r.json()["error"]["message"]


def test_each_image_of_a_batch_is_explained_for_its_own_top1(http, served, heldout):
    """-1 is resolved per image inside one batch (MAX_FILES: 16), each to its own class."""
    indices = [int(np.flatnonzero(heldout.labels == d)[k]) for k in (0, 1) for d in range(8)]
    files = [png_bytes(heldout.images[i]) for i in indices]
    r = http.post(
        "/explain", params={"output": "json", "method": "attribution"}, files=multipart(files)
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["index"] for res in results] == list(range(len(files)))
    for res in results:
        assert res["heatmap"]["explained_class"] == res["predictions"][0]
    assert (
        sum(
            res["predictions"][0]["label"] == str(heldout.labels[i])
            for res, i in zip(results, indices, strict=True)
        )
        >= 14
    )
    one_by_one = explain_json(http, files[3], method="attribution")
    np.testing.assert_allclose(
        results[3]["heatmap"]["grid"], one_by_one["heatmap"]["grid"], atol=1e-4
    )


@pytest.mark.parametrize(("output", "pillow_format"), [("png", "PNG"), ("webp", "WEBP")])
def test_image_answers_say_which_class_they_explain(http, served, digit, output, pillow_format):
    r = http.post(
        "/explain",
        params={"method": "attribution", "target_class": "2", "output": output},
        content=digit,
        headers={"Content-Type": "image/png"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-model"] == "vit_attribution_fp32"
    assert r.headers["x-explain-method"] == "attribution"
    assert (r.headers["x-explained-class-index"], r.headers["x-explained-label"]) == ("2", "2")
    assert r.headers["x-top-label"] == "7"
    img = Image.open(io.BytesIO(r.content))
    assert img.format == pillow_format and img.size == (96, 96)
    top1 = http.post(
        "/explain",
        params={"method": "attribution", "output": "png"},
        content=digit,
        headers={"Content-Type": "image/png"},
    )
    assert top1.headers["x-explained-class-index"] == "7"
    a = np.asarray(Image.open(io.BytesIO(top1.content)).convert("RGB"), dtype=float)
    b = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=float)
    assert np.abs(a - b).mean() > 2  # the overlays differ too


def test_every_served_precision_answers_and_others_are_named(http, served, digit):
    for precision in served:
        result = explain_json(http, digit, method="attribution", precision=precision)
        assert result["heatmap"]["explained_class"]["label"] == "7", precision
    r = http.post(
        "/explain",
        params={"method": "attribution", "precision": "bf16"},
        content=digit,
        headers={"Content-Type": "image/png"},
    )
    assert r.status_code == 422
    assert r.json()["error"]["message"] == (
        f"precision 'bf16' is not served for attribution; available: {', '.join(served)}"
    )

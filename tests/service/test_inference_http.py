"""POST /classify and /explain through the real stack: gateway over HTTP -> Triton gRPC."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from build.checks import rollout_reference
from build.graphs.modules import ClassifyGraph
from build.model import digits
from build.repository import runtimes
from build.repository.writer import onnx_path
from service import heatmap
from service.images import decode
from service.preprocess import Spec, preprocess
from tests.helpers import encode, png_bytes

BATCH = 16
STROKE_THRESHOLD = 8  # of 16: a patch whose original digit pixel is at least half-on


def multipart(files: list[bytes], names: list[str] | None = None):
    names = names or [f"{i}.png" for i in range(len(files))]
    return [("file", (n, data, "image/png")) for n, data in zip(names, files, strict=True)]


@pytest.fixture(scope="module")
def heldout_pngs(heldout):
    return [png_bytes(img) for img in heldout.images]


@pytest.fixture(scope="module")
def explained(http, heldout_pngs):
    """JSON explanations of every held-out image, for mean and max fusion."""
    out = {}
    for fusion in ("mean", "max"):
        grids = []
        for i in range(0, len(heldout_pngs), BATCH):
            r = http.post(
                "/explain",
                params={"output": "json", "head_fusion": fusion},
                files=multipart(heldout_pngs[i : i + BATCH]),
            )
            assert r.status_code == 200, r.text
            grids += [np.array(res["heatmap"]["grid"]) for res in r.json()["results"]]
        out[fusion] = np.stack(grids)
    return out


def test_classify_heldout_accuracy_and_parity_with_onnx_runtime(
    http, heldout, heldout_pngs, repository, contract
):
    top1 = []
    for i in range(0, len(heldout_pngs), BATCH):
        names = [f"img{j}.png" for j in range(i, min(i + BATCH, len(heldout_pngs)))]
        r = http.post("/classify", files=multipart(heldout_pngs[i : i + BATCH], names))
        assert r.status_code == 200, r.text
        body = r.json()
        assert [res["filename"] for res in body["results"]] == names  # one per image, in order
        assert [res["index"] for res in body["results"]] == list(range(len(names)))
        top1 += [res["predictions"][0]["class_index"] for res in body["results"]]
    top1 = np.array(top1)
    assert (top1 == heldout.labels).mean() >= 0.95
    # Same decisions as ONNX Runtime on the tensors the gateway's own preprocessing makes.
    spec = Spec.from_metadata(
        {**vars(contract.preprocessing), "input_size": contract.preprocessing.input_size}
    )
    tensors = np.stack([preprocess(decode(p, 10**8), spec)[0] for p in heldout_pngs])
    assert np.array_equal(tensors, heldout.images)  # PNG round trip + preprocessing is lossless
    ort = runtimes.create_runner("onnxruntime", str(onnx_path(repository, "classify", "fp32")))
    expected = np.concatenate([ort.run(tensors[i : i + 64])["logits"] for i in range(0, 360, 64)])
    assert np.array_equal(top1, expected.argmax(1))


def test_classify_response_shape_and_parameters(http, heldout_pngs):
    r = http.post(
        "/classify",
        params={"top_k": 3, "precision": "int8"},
        content=heldout_pngs[0],
        headers={"Content-Type": "image/png"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {
        "name": "vit_classify_int8",
        "version": "1",
        "precision": "int8",
        "architecture": "vit-digits-32px-p4",
    }
    preds = body["results"][0]["predictions"]
    assert len(preds) == 3
    assert preds[0]["probability"] >= preds[1]["probability"] >= preds[2]["probability"]
    assert set(body["timings_ms"]) == {"decode", "preprocess", "triton", "postprocess", "total"}
    all_classes = http.post("/classify", params={"top_k": 1000}, files=multipart(heldout_pngs[:1]))
    probs = [p["probability"] for p in all_classes.json()["results"][0]["predictions"]]
    assert len(probs) == 10 and abs(sum(probs) - 1) < 1e-4


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_precision_is_served(http, heldout, heldout_pngs, precision):
    r = http.post("/classify", params={"precision": precision}, files=multipart(heldout_pngs[:16]))
    assert r.status_code == 200, r.text
    top1 = [res["predictions"][0]["class_index"] for res in r.json()["results"]]
    assert (np.array(top1) == heldout.labels[:16]).mean() >= 14 / 16


def test_explain_png_is_the_image_size_and_capped(http, heldout):
    photo = Image.fromarray(heldout.images[3].transpose(1, 2, 0)).resize((300, 200))
    jpeg = encode(photo, "JPEG", quality=92)
    r = http.post("/explain", content=jpeg, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    png = Image.open(io.BytesIO(r.content))
    assert png.format == "PNG" and png.size == (300, 200) and png.mode == "RGB"
    assert r.headers["x-model"] == "vit_explain_fp32"
    assert int(r.headers["x-top-class-index"]) == heldout.labels[3]
    capped = http.post(
        "/explain",
        params={"max_side": 100, "alpha": 0.8, "colormap": "viridis", "head_fusion": "min"},
        content=jpeg,
        headers={"Content-Type": "image/jpeg"},
    )
    assert Image.open(io.BytesIO(capped.content)).size == (100, 67)


def test_explain_json_grid_is_normalised_with_optional_png(http, heldout_pngs, contract):
    r = http.post(
        "/explain",
        params={"output": "json", "include_png": "true"},
        files=multipart(heldout_pngs[:2]),
    )
    assert r.status_code == 200, r.text
    for result in r.json()["results"]:
        hm = result["heatmap"]
        grid = np.array(hm["grid"])
        assert list(hm["shape"]) == list(contract.layout.grid) == list(grid.shape)
        assert grid.min() == 0.0 and grid.max() == 1.0
        assert hm["crop_box"] == [0.0, 0.0, 32.0, 32.0]
        assert Image.open(io.BytesIO(base64.b64decode(hm["png_base64"]))).size == (32, 32)


def stroke_ratio_pass_rate(grids: np.ndarray, strokes: np.ndarray) -> float:
    """Share of images whose mean heat on stroke patches is >= 1.2x that on background patches."""
    passed = 0
    for grid, digit in zip(grids, strokes, strict=True):
        on, off = digit >= STROKE_THRESHOLD, digit == 0
        passed += grid[on].mean() >= 1.2 * grid[off].mean()
    return passed / len(grids)


@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_heat_falls_on_the_strokes(explained, heldout, fusion):
    assert stroke_ratio_pass_rate(explained[fusion], heldout.strokes) >= 0.90


def test_stroke_check_fails_for_an_untrained_vit(heldout, contract):
    """The 1.2x margin is what makes the stroke test a test: an untrained ViT, rendered the same
    way, must not pass it."""
    torch.manual_seed(1)
    model = digits.create_model().eval()
    normalised = ClassifyGraph(model, contract.preprocessing).normalise(
        torch.from_numpy(heldout.images)
    )
    attentions = rollout_reference.extract_attentions(model, normalised)
    raw = rollout_reference.rollout(attentions, "mean", contract.layout).numpy()
    grids = np.stack([heatmap.normalise(g) for g in raw])
    assert stroke_ratio_pass_rate(grids, heldout.strokes) < 0.90


def test_explain_rollout_equals_the_pytorch_reference(explained, heldout, repository, contract):
    model = digits.create_model()
    model.load_state_dict(torch.load(repository / "source" / "digits_vit.pth", weights_only=True))
    model.eval()
    images = torch.from_numpy(heldout.images[:32])
    normalised = ClassifyGraph(model, contract.preprocessing).normalise(images)
    attentions = rollout_reference.extract_attentions(model, normalised)
    for fusion in ("mean", "max"):
        ref = rollout_reference.rollout(attentions, fusion, contract.layout).numpy()
        expected = np.stack([heatmap.normalise(g) for g in ref])
        assert np.abs(explained[fusion][:32] - expected).max() <= 1e-4


def test_explain_png_of_a_large_photo_is_capped_at_the_setting(http, heldout):
    big = Image.fromarray(heldout.images[5].transpose(1, 2, 0)).resize((3000, 2000))
    r = http.post(
        "/explain", content=encode(big, "JPEG", quality=85), headers={"Content-Type": "image/jpeg"}
    )
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (2048, 1365)  # MAX_HEATMAP_SIDE default
    json_r = http.post(
        "/explain",
        params={"output": "json"},
        content=encode(big, "PNG"),
        headers={"Content-Type": "image/png"},
    )
    result = json_r.json()["results"][0]
    assert (result["width"], result["height"]) == (3000, 2000)
    assert result["heatmap"]["crop_box"] == [500.0, 0.0, 2500.0, 2000.0]

"""method= and target_class= of /explain: the rules (service/explain_method.py) unit-tested, and the
route's side of them against a fake Triton that implements TritonBackend's interface and records
what it is sent. The same behaviour against a real Triton is in test_attribution_http.py."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import explain_method
from service.config import Settings
from service.errors import InvalidParameter, TritonUnavailable
from service.main import create_app
from service.triton import Variant
from tests.helpers import png_bytes

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@pytest.mark.parametrize(
    ("target", "expected"),
    [(None, explain_method.TOP1), ("0", 0), ("9", 9), ("+3", 3), ("007", 7), ("seven", 7)],
)
def test_an_index_or_a_label_names_the_class(target, expected):
    assert explain_method.resolve(target, DIGITS) == expected


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("10", "out of range: the model has 10 classes, 0-9"),
        ("-1", "out of range"),  # the top-1 is asked for by leaving target_class out
        ("99999999999999999999999", "out of range"),
        ("sevn", "did you mean 'seven'?"),
        ("Seven", "did you mean 'seven'?"),  # labels are exact: the hint says how it is written
        ("\u0663", "not a label of this model: give a class index 0-9 or one of"),  # Arabic 3
        (" 7", "not a label"),
    ],
)
def test_a_bad_target_class_is_a_422_naming_what_is_valid(target, fragment):
    with pytest.raises(InvalidParameter, match=fragment):
        explain_method.resolve(target, DIGITS)


def test_a_label_two_classes_share_must_be_given_by_index():
    labels = ("crane", "tabby", "crane")
    with pytest.raises(InvalidParameter, match=r"names 2 classes \(0, 2\): give its index"):
        explain_method.resolve("crane", labels)
    assert explain_method.resolve("2", labels) == 2
    schema = explain_method.openapi_schema(labels)
    assert schema["anyOf"][1]["enum"] == ["tabby"]  # only labels that name one class


@pytest.mark.parametrize(
    ("method", "query", "target", "fragment"),
    [
        ("rollout", {}, "3", "target_class needs method=attribution: rollout is class-agnostic"),
        ("attribution", {"head_fusion": "max"}, None, "does not take head_fusion"),
        ("attribution", {"discard_ratio": "0"}, "3", "does not take discard_ratio"),
        (
            "attribution",
            {"head_fusion": "mean", "discard_ratio": "0.9"},
            None,
            "does not take head_fusion and discard_ratio",
        ),
    ],
)
def test_the_other_methods_parameters_are_refused(method, query, target, fragment):
    with pytest.raises(InvalidParameter, match=fragment):
        explain_method.check_parameters(method, query, target)


def test_defaults_and_shared_parameters_are_fine():
    explain_method.check_parameters("rollout", {"head_fusion": "max", "alpha": "1"}, None)
    explain_method.check_parameters("attribution", {"top_k": "3", "precision": "fp32"}, "3")


def test_the_top1_is_the_first_argmax_as_the_graph_resolves_it():
    logits = np.array([[0.0, 2.0, 2.0], [5.0, 1.0, 0.0]], np.float32)
    assert explain_method.explained_index(logits, explain_method.TOP1).tolist() == [1, 0]
    assert explain_method.explained_index(logits, 2).tolist() == [2, 2]


class RecordingTriton:
    """TritonBackend's interface, serving fp32 only: its attribution map is a function of the
    class it is asked for, and it records what it is sent. (What the real catalog answers for a
    missing model is in test_triton_client.py.)"""

    SERVED = frozenset({("classify", "fp32"), ("explain", "fp32"), ("attribution", "fp32")})

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], dict]] = []
        self.unavailable: set[str] = set()  # tasks with no ready model

    async def variant(self, task: str, precision: str, timeout_s: float) -> Variant:
        if task in self.unavailable:
            raise TritonUnavailable(f"no {task} model is ready on Triton", retry_after_s=1)
        if (task, precision) not in self.SERVED:
            raise InvalidParameter(f"precision {precision!r} is not served for {task}")
        return Variant(f"vit_{task}_{precision}", task, precision, 16, ("image",))

    async def variants(self, timeout_s: float, force: bool = False):
        return {key: await self.variant(*key, timeout_s) for key in sorted(self.SERVED)}

    async def infer(self, variant, images, outputs, deadline_s, scalars=None):
        self.calls.append((variant.name, outputs, dict(scalars or {})))
        n = len(images)
        logits = np.tile(np.arange(10, dtype=np.float32), (n, 1))  # top-1: class 9
        out = {"logits": logits}
        for name in outputs[1:]:
            grid = np.zeros((n, 8, 8), np.float32)
            if name == "attribution":
                target = int(scalars["target_class"])
                cls = 9 if target == -1 else target
                grid[:, cls // 8, cls % 8] = 5.0  # raw relevance, not 0-1
            else:
                grid[:, 4, 4] = 0.3
            out[name] = grid
        return out

    async def ready(self, models, timeout_s):
        return True, "ready"

    async def close(self) -> None:
        pass


@pytest.fixture
def named_digits(repository, tmp_path):
    """The default model's model.json with word labels, so a label is not also an index."""
    meta = json.loads((repository / "model.json").read_text())
    meta["labels"] = list(DIGITS)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(meta))
    return path


@pytest.fixture
def fake_app(named_digits):
    app = create_app(Settings(model_metadata=named_digits))
    with TestClient(app) as client:
        fake = RecordingTriton()
        app.state.services.triton = fake
        yield client, fake


@pytest.fixture(scope="module")
def image() -> bytes:
    return png_bytes(np.full((3, 32, 32), 128, np.uint8))


def post(client, image, **params):
    return client.post(
        "/explain", params=params, content=image, headers={"Content-Type": "image/png"}
    )


def test_attribution_goes_to_the_attribution_model_with_the_class_as_int32(fake_app, image):
    client, fake = fake_app
    r = post(client, image, method="attribution", target_class="seven", output="json")
    assert r.status_code == 200, r.text
    name, outputs, scalars = fake.calls[-1]
    assert (name, outputs) == ("vit_attribution_fp32", ["logits", "attribution"])
    assert scalars["target_class"] == 7 and scalars["target_class"].dtype == np.int32
    result = r.json()["results"][0]
    heatmap = result["heatmap"]
    assert heatmap["method"] == "attribution"
    assert heatmap["explained_class"]["class_index"] == 7
    assert heatmap["explained_class"]["label"] == "seven"
    assert heatmap["head_fusion"] is None and heatmap["discard_ratio"] is None
    grid = np.array(heatmap["grid"])
    assert grid.max() == 1.0 and grid[0, 7] == 1.0  # raw relevance, normalised like rollout
    assert result["predictions"][0]["label"] == "nine"


def test_attribution_without_a_class_explains_each_images_top1(fake_app, image):
    client, fake = fake_app
    r = post(client, image, method="attribution", output="png")
    assert r.status_code == 200, r.text
    assert fake.calls[-1][2]["target_class"] == explain_method.TOP1
    assert r.headers["x-explain-method"] == "attribution"
    assert r.headers["x-explained-class-index"] == "9"
    assert r.headers["x-explained-label"] == "nine"
    assert Image.open(io.BytesIO(r.content)).format == "PNG"


def test_rollout_is_unchanged_and_says_so(fake_app, image):
    client, fake = fake_app
    r = post(client, image, output="json", head_fusion="max")
    assert r.status_code == 200, r.text
    assert fake.calls[-1][:2] == ("vit_explain_fp32", ["logits", "rollout_max"])
    heatmap = r.json()["results"][0]["heatmap"]
    assert heatmap["method"] == "rollout" and heatmap["explained_class"] is None
    assert heatmap["head_fusion"] == "max" and heatmap["discard_ratio"] == 0.0
    png = post(client, image)
    assert png.headers["x-explain-method"] == "rollout"
    assert "x-explained-class-index" not in png.headers


@pytest.mark.parametrize(
    ("params", "status", "fragment"),
    [
        ({"method": "attribution", "target_class": "10"}, 422, "0-9"),
        ({"method": "attribution", "target_class": "sevn"}, 422, "did you mean 'seven'"),
        ({"method": "gradcam"}, 422, "method"),
        ({"target_class": "3"}, 422, "rollout is class-agnostic"),
        ({"method": "attribution", "head_fusion": "mean"}, 422, "does not take head_fusion"),
        ({"method": "attribution", "precision": "fp16"}, 422, "not served for attribution"),
        ({"method": "attribution"}, 503, "no attribution model is ready"),
    ],
)
def test_refusals_come_before_any_inference(fake_app, image, params, status, fragment):
    client, fake = fake_app
    fake.unavailable = {"attribution"} if status == 503 else set()
    r = post(client, image, **params)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]
    assert fake.calls == []


def test_info_lists_the_attribution_precisions_apart_from_explain(fake_app):
    client, _ = fake_app
    info = client.get("/info").json()
    assert info["attribution"] == ["fp32"]
    assert [m["name"] for m in info["explain"]] == ["vit_explain_fp32"]


def test_explanations_are_counted_by_method(fake_app, image):
    client, _ = fake_app

    def count(method: str) -> float:
        text = client.get("/metrics").text
        line = f'gateway_explained_images_total{{method="{method}"}}'
        return float(next(x for x in text.splitlines() if x.startswith(line)).split()[-1])

    before = count("attribution"), count("rollout")
    post(client, image, method="attribution", output="json")
    assert (count("attribution"), count("rollout")) == (before[0] + 1, before[1])

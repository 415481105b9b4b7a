"""The JPEG ensembles (make repo --preprocess dali) served by a real tritonserver.

The local Triton (pytriton's 2.51) has no DALI backend, so vit_preprocess_jpeg runs here as a
python-backend model (tests/triton/dali_python_model.py) on the cpu variant of the same DALI
pipeline, serialized by the build's writer; the ensembles are the gpu target's configs as the
build writes them (build/repository/jpeg_ensemble.py), their second step the cpu repository's own
models.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from build.checks import dali_gate
from build.contract import JpegEnsembles
from build.names import JPEG_INPUT, JPEG_MODEL_SUFFIX, PREPROCESS_MODEL, jpeg_model_name
from build.repository import jpeg_ensemble
from build.repository.writer import model_name
from loadtest.corpus import default_corpus
from local_triton.launcher import LocalTriton
from tests.helpers import encode, free_ports, start_gateway, stop_gateway

STAND_IN = Path(__file__).with_name("dali_python_model.py")
SERVED = [("classify", "fp32"), ("explain", "fp32")]


@pytest.fixture(scope="module")
def ensemble_repository(repository, contract, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jpeg-repository")
    for task, precision in SERVED:
        name = model_name(task, precision)
        shutil.copytree(repository / "cpu" / name, root / name)
        jpeg_ensemble.write_ensemble(root, contract, task, precision, target="cpu")
    model_dir = jpeg_ensemble.write_preprocess_model(root, contract, "cpu", backend="python")
    shutil.copy2(STAND_IN, model_dir / "1" / "model.py")
    # model.json as make repo --preprocess dali writes it: the gateway reads the suffix there
    jpeg = JpegEnsembles(JPEG_MODEL_SUFFIX, JPEG_INPUT, ["gpu"], "dali")
    dataclasses.replace(contract, jpeg_ensembles=jpeg).write(root / "model.json")
    return root


@pytest.fixture(scope="module")
def server(ensemble_repository, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("triton-jpeg") / "tritonserver.log"
    with log_path.open("w") as log, LocalTriton(ensemble_repository, free_ports(), log=log) as t:
        yield t


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.ports.grpc}") as c:
        yield c


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [p.data for p in default_corpus().photos]


@pytest.fixture(scope="module")
def uploads(heldout) -> list[bytes]:
    return dali_gate.render_uploads(heldout.images[:48])


def jpeg_input(files: list[bytes]) -> grpcclient.InferInput:
    """Several files in one request: rows padded with zeros to the longest (DALI ignores what
    follows a JPEG's end marker)."""
    rows = np.zeros((len(files), max(len(f) for f in files)), np.uint8)
    for row, data in zip(rows, files, strict=True):
        row[: len(data)] = np.frombuffer(data, np.uint8)
    tensor = grpcclient.InferInput(JPEG_INPUT, list(rows.shape), "UINT8")
    tensor.set_data_from_numpy(rows)
    return tensor


def infer(client, model: str, files: list[bytes], outputs: list[str], extra=()) -> dict:
    result = client.infer(  # every output, as the gateway asks: see tensor_path
        model,
        [jpeg_input(files), *extra],
        client_timeout=60,
        timeout=30_000_000,  # the gateway sends a queue timeout with every call
    )
    return {o: result.as_numpy(o) for o in outputs}


def one_by_one(client, model: str, files: list[bytes], output: str) -> np.ndarray:
    """Each file its own request ([1, length], as the gateway sends them), all in flight at once
    so the dynamic batcher puts files of different lengths into one batch."""
    with ThreadPoolExecutor(8) as pool:
        parts = pool.map(lambda f: infer(client, model, [f], [output])[output], files)
        return np.concatenate(list(parts))


def tensor_path(client, model: str, tensors: np.ndarray, outputs: list[str], extra=()) -> dict:
    """The same model on tensors (batches within the cpu models' max_batch_size of 16)."""
    parts = []
    for i in range(0, len(tensors), 16):
        image = grpcclient.InferInput(
            "image", [len(tensors[i : i + 16]), *tensors.shape[1:]], "UINT8"
        )
        image.set_data_from_numpy(tensors[i : i + 16])
        # every output, as the gateway asks (service/triton._wanted): Triton's response cache
        # keys by inputs only, so a subset would be what later requests with these inputs get
        result = client.infer(model, [image, *extra])
        parts.append({o: result.as_numpy(o) for o in outputs})
    return {o: np.concatenate([p[o] for p in parts]) for o in outputs}


def test_every_model_of_the_ensemble_repository_is_ready(client):
    names = {m["name"] for m in client.get_model_repository_index(as_json=True)["models"]}
    for task, precision in SERVED:
        assert client.is_model_ready(jpeg_model_name(model_name(task, precision)))
    assert client.is_model_ready(PREPROCESS_MODEL) and PREPROCESS_MODEL in names


def test_triton_batches_jpegs_of_different_lengths_into_the_dali_pipelines_pixels(
    client, contract, photos
):
    """Ragged batching: 24 photos of 10-400 KiB, one request each, are batched by Triton and come
    back exactly as the pipeline gives them in-process, within the gate's bounds of the
    gateway's own preprocessing."""
    got = one_by_one(client, PREPROCESS_MODEL, photos, "image")
    pre = contract.preprocessing
    assert got.shape == (len(photos), 3, *pre.input_size) and got.dtype == np.uint8
    in_process = dali_gate.dali_tensors(photos, pre)
    np.testing.assert_array_equal(got, in_process)
    diff = dali_gate.pixel_difference(dali_gate.gateway_tensors(photos, pre), got)
    assert diff["mean"] <= dali_gate.MAX_MEAN_DIFF and diff["max"] <= dali_gate.MAX_PIXEL_DIFF
    stats = client.get_inference_statistics(PREPROCESS_MODEL, as_json=True)["model_stats"][0]
    assert int(stats["execution_count"]) < int(stats["inference_count"]), "never batched"


def test_the_classify_ensemble_answers_jpeg_bytes_as_the_tensor_path_does(
    client, contract, photos, uploads
):
    files = photos + uploads
    model = model_name("classify", "fp32")
    got = one_by_one(client, jpeg_model_name(model), files, "logits")
    reference = dali_gate.gateway_tensors(files, contract.preprocessing)
    expected = tensor_path(client, model, reference, ["logits"])["logits"]
    assert got.shape == expected.shape == (len(files), len(contract.labels))
    # the held-out digits: the answers the gate holds (photos mean nothing to a digits model,
    # whose near-tied top-2 on them may swap)
    digits = slice(len(photos), None)
    agreement = float((got[digits].argmax(1) == expected[digits].argmax(1)).mean())
    assert agreement >= dali_gate.MIN_TOP1_AGREEMENT, agreement
    # the same model on pixels within 1-13 levels of each other: logits stay close
    assert np.abs(got - expected).max() < 1.0, np.abs(got - expected).max(1)


def test_the_explain_ensemble_passes_discard_ratio_through(client, contract, uploads):
    files = uploads[:8]
    ratios = np.linspace(0.0, 0.9, len(files), dtype=np.float32).reshape(-1, 1)

    def ratio_input():
        tensor = grpcclient.InferInput("discard_ratio", list(ratios.shape), "FP32")
        tensor.set_data_from_numpy(ratios)
        return tensor

    model = model_name("explain", "fp32")
    outputs = ["logits", "rollout_mean"]
    got = infer(client, jpeg_model_name(model), files, outputs, [ratio_input()])
    tensors = dali_gate.dali_tensors(files, contract.preprocessing)
    expected = tensor_path(client, model, tensors, outputs, [ratio_input()])
    np.testing.assert_allclose(got["rollout_mean"], expected["rollout_mean"], atol=1e-5)
    assert got["rollout_mean"].shape == (len(files), *contract.layout.grid)


def test_a_truncated_jpeg_fails_its_batch_and_the_next_batch_is_served(client, photos):
    """dali_backend answers every request of a batch with the error of one bad file: the gateway
    sends only files that pass its checks, and retries on its own path (service/jpeg_path.py)."""
    model = jpeg_model_name(model_name("classify", "fp32"))
    with pytest.raises(InferenceServerException, match="DALI"):
        infer(client, model, [photos[0][: len(photos[0]) // 2]], ["logits"])
    assert infer(client, model, [photos[0]], ["logits"])["logits"].shape[0] == 1


# --- the gateway: JPEG uploads as bytes (service/jpeg_path.py) -------------------------------


@pytest.fixture(scope="module")
def http(server, ensemble_repository):
    gateway = start_gateway(server.ports.grpc, ensemble_repository)
    try:
        with gateway.client() as c:
            yield c
    finally:
        stop_gateway(gateway)


def jpeg_images(http) -> dict[str, float]:
    text = http.get("/metrics").text
    return {
        m[1]: float(m[2])
        for m in re.finditer(r'^gateway_jpeg_images_total\{outcome="(\w+)"\} (\S+)$', text, re.M)
    }


def post(http, files: list[bytes], kind: str = "jpg"):
    parts = [("file", (f"{i}.{kind}", data, f"image/{kind}")) for i, data in enumerate(files)]
    return http.post("/classify", files=parts, params={"top_k": 1})


def test_the_gateway_sends_jpeg_uploads_as_bytes_and_answers_as_the_tensor_path(
    http, client, contract, photos, uploads
):
    files = [photos[3], *uploads[:3]]  # a 444x250 photo and three digit uploads
    before = jpeg_images(http)
    response = post(http, files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "header" in body["timings_ms"] and "decode" not in body["timings_ms"]
    assert jpeg_images(http)["sent"] == before["sent"] + len(files)
    tensors = dali_gate.gateway_tensors(files, contract.preprocessing)
    expected = tensor_path(client, model_name("classify", "fp32"), tensors, ["logits"])["logits"]
    got = [r["predictions"][0]["class_index"] for r in body["results"]]
    assert got == expected.argmax(1).tolist()
    assert (body["results"][0]["width"], body["results"][0]["height"]) == (444, 250)


def test_png_and_cmyk_uploads_are_decoded_by_the_gateway(http, heldout):
    from PIL import Image

    digit = Image.fromarray(heldout.images[0].transpose(1, 2, 0))
    before = jpeg_images(http)
    for files, kind in (
        ([encode(digit, "PNG")], "png"),
        ([encode(digit.convert("CMYK"), "JPEG")], "jpg"),
    ):
        response = post(http, files, kind)
        assert response.status_code == 200, response.text
        assert "decode" in response.json()["timings_ms"]
    assert jpeg_images(http) == before


def test_a_truncated_jpeg_never_reaches_triton(http, photos):
    before = jpeg_images(http)
    response = post(http, [photos[1][: len(photos[1]) // 2]])
    assert response.status_code == 400 and response.json()["error"]["code"] == "corrupt_image"
    assert jpeg_images(http) == before


def test_a_jpeg_dali_refuses_is_decoded_by_the_gateway_and_gets_its_usual_answer(http, photos):
    """Passes the header checks, fails in DALI (its first component names a quantisation table
    the file never defines): the gateway falls back and answers as it does for any corrupt JPEG."""
    data = bytearray(photos[1])  # a baseline JPEG
    sof = data.index(b"\xff\xc0")
    data[sof + 12] = 3  # SOF0: length 2, precision 1, height 2, width 2, count 1, id 1, sampling 1
    before = jpeg_images(http)
    response = post(http, [bytes(data)])
    assert response.status_code == 400 and response.json()["error"]["code"] == "corrupt_image"
    assert jpeg_images(http)["fallback"] == before["fallback"] + 1

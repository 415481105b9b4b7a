"""Triton's own answers reaching the client, end to end on a real Triton: a full queue answers
503, an expired deadline 504, a request that expires in Triton's queue 504, a model that raises
502 (without Triton's text), and a model that does not batch (max_batch_size 0) is served one
image per call. Python-backend models named like precision variants (so the gateway routes to
them) make each happen on purpose."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from build.contract import JpegEnsembles, ModelContract
from local_triton.launcher import LocalTriton
from service.errors import ServiceError
from service.triton import TritonBackend, Variant
from tests.helpers import (
    encode,
    free_port,
    free_ports,
    local_gateway,
    png_bytes,
    start_gateway,
    stop_gateway,
)

DELAY_S = 0.6

SLOW_MODEL = f"""
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep({DELAY_S})
        responses = []
        for request in requests:
            n = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().shape[0]
            logits = pb_utils.Tensor("logits", np.zeros((n, 10), dtype=np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[logits]))
        return responses
"""

SLOW_CONFIG = """
name: "vit_classify_slow"
backend: "python"
max_batch_size: 1
input [ { name: "image" data_type: TYPE_UINT8 dims: [ 3, 32, 32 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
dynamic_batching {
  default_queue_policy {
    timeout_action: REJECT
    default_timeout_microseconds: 10000000
    allow_timeout_override: true
    max_queue_size: 1
  }
}
"""


# Waits in the queue at most 100 ms whatever the client asks: a real Triton queue timeout.
QUEUE_TIMEOUT_CONFIG = (
    SLOW_CONFIG.replace("vit_classify_slow", "vit_classify_slowq")
    .replace("default_timeout_microseconds: 10000000", "default_timeout_microseconds: 100000")
    .replace("allow_timeout_override: true", "allow_timeout_override: false")
    .replace("max_queue_size: 1", "max_queue_size: 4")
)

FAILING_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        raise pb_utils.TritonModelException("kaboom in /secret/path/model.py")
"""

FAILING_CONFIG = """
name: "vit_classify_boom"
backend: "python"
max_batch_size: 16
input [ { name: "image" data_type: TYPE_UINT8 dims: [ 3, 32, 32 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

# No batching: the batch dimension is part of dims. Class = the image's first pixel mod 10.
UNBATCHED_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            logits = np.zeros((images.shape[0], 10), dtype=np.float32)
            logits[np.arange(len(images)), images[:, 0, 0, 0] % 10] = 10.0
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("logits", logits)]))
        return responses
"""

UNBATCHED_CONFIG = """
name: "vit_classify_nobatch"
backend: "python"
max_batch_size: 0
input [ { name: "image" data_type: TYPE_UINT8 dims: [ 1, 3, 32, 32 ] } ]
output [ { name: "logits" data_type: TYPE_FP32 dims: [ 1, 10 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def jpeg_twin(config: str) -> str:
    """<model>_jpeg as the gateway sees a DALI ensemble: one JPEG file per request in (UINT8
    [-1], ragged), the same outputs, queue and batching, answered by the same code."""
    name = re.search(r'name: "(\w+)"', config)
    assert name is not None
    jpeg_input = (
        'input [ { name: "jpeg" data_type: TYPE_UINT8 dims: [ -1 ] allow_ragged_batch: true } ]'
    )
    config = config.replace(f'name: "{name[1]}"', f'name: "{name[1]}_jpeg"')
    return re.sub(r"input \[ \{ name: \"image\".*\]", jpeg_input, config, count=1)


MODELS = {
    "vit_classify_slow": (SLOW_CONFIG, SLOW_MODEL),
    "vit_classify_slowq": (QUEUE_TIMEOUT_CONFIG, SLOW_MODEL),
    "vit_classify_boom": (FAILING_CONFIG, FAILING_MODEL),
    "vit_classify_nobatch": (UNBATCHED_CONFIG, UNBATCHED_MODEL),
}
# The JPEG-bytes twins (service/jpeg_path.py sends to <model>_jpeg through the raw gRPC stub):
# the same behaviour, so Triton's answers on both paths can be compared.
MODELS |= {
    f"{name}_jpeg": (jpeg_twin(config), code.replace('"image"', '"jpeg"'))
    for name, (config, code) in MODELS.items()
    if name != "vit_classify_nobatch"
}


@pytest.fixture(scope="module")
def slow_triton(tmp_path_factory):
    repo = tmp_path_factory.mktemp("slow_repo")
    for name, (config, code) in MODELS.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(config)
        (repo / name / "1" / "model.py").write_text(code)
    with (
        (repo.parent / "slow-triton.log").open("w") as log,
        LocalTriton(Path(repo), free_ports(), log=log) as server,
    ):
        yield server


def post_many(
    url: str, count: int, image: bytes, content_type: str = "image/png"
) -> list[httpx.Response]:
    responses: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            responses.append(
                client.post(
                    "/classify",
                    params={"precision": "slow"},
                    content=image,
                    headers={"Content-Type": content_type},
                )
            )

    threads = [threading.Thread(target=send) for _ in range(count)]
    for t in threads:
        t.start()
        time.sleep(0.02)  # in order: the first executes, the second waits, the rest overflow
    for t in threads:
        t.join()
    return responses


def test_full_triton_queue_answers_503_with_retry_after(slow_triton, repository, heldout):
    gateway = start_gateway(slow_triton.ports.grpc, repository, REQUEST_TIMEOUT_S="10")
    try:
        responses = post_many(gateway.url, 6, png_bytes(heldout.images[0]))
    finally:
        stop_gateway(gateway)
    statuses = sorted(r.status_code for r in responses)
    assert len(statuses) == 6 and set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    for r in responses:
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "triton_queue_full"
            assert r.headers["retry-after"] == "1"


def test_deadline_answers_504_in_time(slow_triton, repository, heldout):
    deadline = 0.3
    gateway = start_gateway(slow_triton.ports.grpc, repository, REQUEST_TIMEOUT_S=str(deadline))
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            start = time.monotonic()
            r = client.post(
                "/classify",
                params={"precision": "slow"},
                content=png_bytes(heldout.images[0]),
                headers={"Content-Type": "image/png"},
            )
            elapsed = time.monotonic() - start
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "triton_timeout"
        assert elapsed < deadline + 1.0  # answered at the deadline, not when the model finished
    finally:
        stop_gateway(gateway)
    time.sleep(DELAY_S)  # let the abandoned execution finish before the next test


def test_the_deadline_counts_from_the_end_of_the_upload(slow_triton, repository, heldout):
    """An upload slower than REQUEST_TIMEOUT_S still gets the whole deadline for the model: the
    deadline once counted from before the body was read, and a slow client got a 504 that blamed
    Triton."""
    image = png_bytes(heldout.images[0])

    def trickle():
        for start in range(0, len(image), len(image) // 3 + 1):
            yield image[start : start + len(image) // 3 + 1]
            time.sleep(0.5)

    gateway = start_gateway(slow_triton.ports.grpc, repository, REQUEST_TIMEOUT_S="1.0")
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            r = client.post(
                "/classify",
                params={"precision": "slow"},
                content=trickle(),  # 1.5 s of upload, then 0.6 s of model
                headers={"Content-Type": "image/png", "Content-Length": str(len(image))},
            )
        assert r.status_code == 200, r.text
    finally:
        stop_gateway(gateway)


@pytest.fixture(scope="module")
def gateway_on_slow(slow_triton, repository):
    with local_gateway(slow_triton.ports.grpc, repository, REQUEST_TIMEOUT_S="10") as gateway:
        yield gateway


def test_a_request_that_expires_in_tritons_queue_answers_504(gateway_on_slow, heldout):
    """Triton itself rejects it (queue policy: 100 ms, REJECT); the gateway's own deadline is
    10 s, so this 504 can only come from Triton's queue."""
    image = png_bytes(heldout.images[0])
    answers: dict[str, tuple[httpx.Response, float]] = {}

    def send(name: str) -> None:
        with httpx.Client(base_url=gateway_on_slow.url, timeout=30) as client:
            start = time.monotonic()
            r = client.post(
                "/classify",
                params={"precision": "slowq"},
                content=image,
                headers={"Content-Type": "image/png"},
            )
            answers[name] = (r, time.monotonic() - start)

    first = threading.Thread(target=send, args=("executing",))
    first.start()
    time.sleep(0.2)  # the first is executing (0.6 s); the second waits in the queue
    send("queued")
    first.join()
    assert answers["executing"][0].status_code == 200
    queued, elapsed = answers["queued"]
    assert queued.status_code == 504, queued.text
    assert queued.json()["error"]["code"] == "triton_timeout"
    assert elapsed < 5.0  # long before the gateway's own 10 s deadline


def test_a_model_that_raises_answers_502_without_its_text(gateway_on_slow, heldout):
    with httpx.Client(base_url=gateway_on_slow.url, timeout=30) as client:
        r = client.post(
            "/classify",
            params={"precision": "boom"},
            content=png_bytes(heldout.images[0]),
            headers={"Content-Type": "image/png"},
        )
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "triton_error"
        assert "kaboom" not in r.text and "/secret/path" not in r.text
        assert client.get("/healthz").status_code == 200


def test_a_model_that_does_not_batch_is_served_one_image_per_call(gateway_on_slow):
    files = []
    for value in (3, 7, 5):  # the fake model's class is the first pixel mod 10
        chw = np.full((3, 32, 32), value, dtype=np.uint8)
        files.append(("file", (f"{value}.png", png_bytes(chw), "image/png")))
    with httpx.Client(base_url=gateway_on_slow.url, timeout=30) as client:
        r = client.post("/classify", params={"precision": "nobatch"}, files=files)
    assert r.status_code == 200, r.text
    top = [res["predictions"][0]["class_index"] for res in r.json()["results"]]
    assert top == [3, 7, 5]


# --- The JPEG-bytes path's raw gRPC stub against tritonclient, on the same Triton answers ---

TENSOR = np.zeros((1, 3, 32, 32), np.uint8)
JPEG = encode(Image.new("RGB", (48, 32), (200, 30, 90)), "JPEG")


def tensor_call(backend: TritonBackend, model: str, deadline_s: float):
    """The tensor path's call (tritonclient). The precision is one the catalog has, so a model
    gone from Triton is not answered as an unknown precision (422) instead."""
    variant = Variant(model, "classify", "slow", 1)
    return backend.infer(variant, TENSOR, ["logits"], deadline_s)


def jpeg_call(backend: TritonBackend, model: str, deadline_s: float):
    """The bytes path's call (the generated stub) to the model's JPEG twin."""
    return backend.infer_jpeg(f"{model}_jpeg", "jpeg", [JPEG], ["logits"], deadline_s)


def answer(error: BaseException | None) -> tuple:
    """All of an error the client and the logs can tell apart."""
    if error is None:
        return ("ok",)
    assert isinstance(error, ServiceError), repr(error)
    return (type(error).__name__, error.status, error.code, error.message, error.retry_after_s)


async def outcomes(url: str, call, model: str, deadline_s: float, count: int, gap_s: float):
    """count calls gap_s apart, all in flight together: their answers, in order of sending."""
    backend = TritonBackend(url, "vit", retry_after_s=3)
    try:

        async def one(i: int) -> tuple:
            await asyncio.sleep(i * gap_s)
            try:
                await call(backend, model, deadline_s)
            except Exception as exc:
                return answer(exc)
            return answer(None)

        return await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        await backend.close()


QUEUE_FULL = ("TritonQueueFull", 503, "triton_queue_full", "Triton's queue is full; retry later", 3)
TIMEOUT = ("TritonTimeout", 504, "triton_timeout", "Triton did not answer within the request "
           "deadline", None)  # fmt: skip
FAILED = ("TritonFailed", 502, "triton_error", "Triton could not run the model; the gateway log "
          "has the details", None)  # fmt: skip
UNAVAILABLE = ("TritonUnavailable", 503, "triton_unavailable", "Triton or the model is "
               "unavailable; retry later", 3)  # fmt: skip


@pytest.mark.parametrize(
    ("case", "model", "deadline_s", "count", "gap_s", "expected"),
    [
        # one executes (0.6 s), one waits (max_queue_size 1), the rest are turned away
        ("queue full", "vit_classify_slow", 10.0, 4, 0.05, [("ok",), ("ok",), QUEUE_FULL,
                                                           QUEUE_FULL]),
        # the gRPC deadline passes while the model runs
        ("deadline", "vit_classify_slow", 0.3, 1, 0, [TIMEOUT]),
        # Triton's own queue policy rejects the second after 100 ms
        ("queue timeout", "vit_classify_slowq", 10.0, 2, 0.2, [("ok",), TIMEOUT]),
        ("model raises", "vit_classify_boom", 10.0, 1, 0, [FAILED]),
        ("missing model", "vit_classify_gone", 10.0, 1, 0, [UNAVAILABLE]),
        ("triton down", "vit_classify_slow", 2.0, 1, 0, [UNAVAILABLE]),
    ],
)  # fmt: skip
def test_the_jpeg_stub_maps_tritons_errors_as_the_tensor_path_does(
    slow_triton, caplog, case, model, deadline_s, count, gap_s, expected
):
    """Each of Triton's answers, as the client sees it and as the log names it, is the same
    whether tritonclient (tensors) or the raw stub (JPEG bytes) made the call."""
    url = f"127.0.0.1:{free_port() if case == 'triton down' else slow_triton.ports.grpc}"
    logged = {}
    for path, call in (("tensors", tensor_call), ("jpeg bytes", jpeg_call)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="service.triton"):
            got = asyncio.run(outcomes(url, call, model, deadline_s, count, gap_s))
        assert got == expected, (path, got)
        # translate()'s log line: Triton's status as tritonclient reads it, and its message with
        # the model's name made alike
        logged[path] = [
            (r.args[0], str(r.args[1]).replace(f"{model}_jpeg", model))
            for r in caplog.records
            if r.msg.startswith("Triton error")
        ]
        time.sleep(2 * DELAY_S)  # the abandoned executions finish before the next path's calls
    assert logged["tensors"] == logged["jpeg bytes"] and len(logged["tensors"]) == sum(
        e != ("ok",) for e in expected
    ), logged


@pytest.fixture(scope="module")
def jpeg_gateway(slow_triton, repository, tmp_path_factory):
    """A gateway that sends JPEG uploads to <model>_jpeg as bytes (model.json names the
    ensembles, JPEG_TO_TRITON on), in front of the same Triton."""
    folder = tmp_path_factory.mktemp("jpeg-gateway")
    contract = ModelContract.read(repository / "model.json")
    ensembles = JpegEnsembles("_jpeg", "jpeg", ["cpu"], "python stand-in (tests)")
    dataclasses.replace(contract, jpeg_ensembles=ensembles).write(folder / "model.json")
    with local_gateway(
        slow_triton.ports.grpc, folder, REQUEST_TIMEOUT_S="10", JPEG_TO_TRITON="true"
    ) as gateway:
        yield gateway


def test_a_full_queue_on_the_jpeg_path_answers_503_with_retry_after(jpeg_gateway):
    statuses, answers = [], post_many(jpeg_gateway.url, 6, JPEG, "image/jpeg")
    for r in answers:
        statuses.append(r.status_code)
        if r.status_code == 200:  # sent as bytes: the header check, no decode here
            timings = r.json()["timings_ms"]
            assert "header" in timings and "decode" not in timings, timings
        else:
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "triton_queue_full"
            assert r.headers["retry-after"] == "1"
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    time.sleep(2 * DELAY_S)

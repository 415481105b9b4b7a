"""Triton's own back-pressure reaching the client: a full queue answers 503, an expired deadline
504. A deliberately slow python-backend model (named like a precision variant, so the gateway
routes to it) on a real Triton makes both happen on purpose."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from local_triton.launcher import LocalTriton
from tests.helpers import free_ports, png_bytes, start_gateway, stop_gateway

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


@pytest.fixture(scope="module")
def slow_triton(tmp_path_factory):
    repo = tmp_path_factory.mktemp("slow_repo")
    model = repo / "vit_classify_slow"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(SLOW_CONFIG)
    (model / "1" / "model.py").write_text(SLOW_MODEL)
    log = (repo.parent / "slow-triton.log").open("w")
    server = LocalTriton(Path(repo), free_ports(), log=log).start()
    yield server
    server.stop()
    log.close()


def post_many(url: str, count: int, image: bytes) -> list[httpx.Response]:
    responses: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            responses.append(
                client.post(
                    "/classify",
                    params={"precision": "slow"},
                    content=image,
                    headers={"Content-Type": "image/png"},
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

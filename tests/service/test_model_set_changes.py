"""What Triton serves changes under a running gateway: Triton restarted with a precision removed
answers 422 for it (not 503 or 502), restarted with it back serves it again, with no gateway
restart. And a request with more files than max_batch_size is split into chunks that keep the
request's order. Real Triton processes, real gateway, real digits."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from local_triton.gateway import LocalGateway
from local_triton.launcher import LocalTriton
from tests.helpers import free_ports, png_bytes, start_gateway, stop_gateway

MODELS = ("vit_classify_fp32", "vit_classify_int8", "vit_explain_fp32")  # /readyz: fp32 ones


@pytest.fixture(scope="module")
def two_model_repo(repository, tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("two_models")
    for name in MODELS:
        shutil.copytree(repository / "cpu" / name, repo / name, copy_function=os.link)
    return repo


def wait_ready(client: httpx.Client) -> None:
    """Until the gateway reaches the restarted Triton again (gRPC reconnect backoff). /readyz
    does not touch the gateway's model catalog: that is still the one from before the restart."""
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "gateway did not reach Triton again within 30 s"
        time.sleep(0.25)


def classify(client: httpx.Client, image: bytes, precision: str) -> httpx.Response:
    return client.post(
        "/classify",
        params={"precision": precision},
        content=image,
        headers={"Content-Type": "image/png"},
    )


def test_triton_restarted_with_a_precision_removed_then_back(two_model_repo, repository, heldout):
    image = png_bytes(heldout.images[0])
    log = (two_model_repo.parent / "restarts.log").open("w")
    triton = LocalTriton(two_model_repo, free_ports(), log=log).start()
    gateway: LocalGateway | None = None
    parked = two_model_repo.parent / "parked_int8"
    try:
        gateway = start_gateway(
            triton.ports.grpc, repository, DEFAULT_PRECISION="fp32", READINESS_TIMEOUT_S="1"
        )
        with gateway.client() as client:
            assert classify(client, image, "int8").status_code == 200

            triton.stop()
            shutil.move(two_model_repo / "vit_classify_int8", parked)
            triton.start()
            wait_ready(client)
            gone = classify(client, image, "int8")
            assert gone.status_code == 422, gone.text
            assert gone.json()["error"]["code"] == "invalid_parameter"
            assert "available: fp32" in gone.json()["error"]["message"]

            triton.stop()
            shutil.move(parked, two_model_repo / "vit_classify_int8")
            triton.start()
            wait_ready(client)
            back = classify(client, image, "int8")
            assert back.status_code == 200, back.text
            assert back.json()["model"]["name"] == "vit_classify_int8"
    finally:
        if gateway is not None:
            stop_gateway(gateway)
        triton.stop()
        log.close()


def test_more_files_than_max_batch_size_keep_their_order(triton, repository, heldout):
    """40 files, max_batch_size 16: three chunks sent together, answers in request order."""
    count = 40
    gateway = start_gateway(triton.ports.grpc, repository, MAX_FILES=str(count))
    names = [f"digit-{i:02d}.png" for i in range(count)]
    files = [
        ("file", (name, png_bytes(heldout.images[i]), "image/png")) for i, name in enumerate(names)
    ]
    try:
        with gateway.client() as client:
            r = client.post("/classify", files=files)
    finally:
        stop_gateway(gateway)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["filename"] for res in results] == names
    assert [res["index"] for res in results] == list(range(count))
    top1 = np.array([res["predictions"][0]["class_index"] for res in results])
    assert (top1 == heldout.labels[:count]).mean() >= 0.95
    # Order, not just accuracy: the answers match each file's own digit where the model is right,
    # and a shuffled order would not.
    shuffled = np.roll(heldout.labels[:count], 16)
    assert (top1 == heldout.labels[:count]).sum() > (top1 == shuffled).sum() + 20

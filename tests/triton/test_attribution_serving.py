"""The attribution model (vit_attribution_fp32) served by a real tritonserver from the built cpu
repository, against the eager reference (build/attribution_reference.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

from build import attribution_reference, digits
from build.repository import model_name

MODEL = model_name("attribution", "fp32")


@pytest.fixture(scope="module")
def client(triton):
    with grpcclient.InferenceServerClient(f"127.0.0.1:{triton.ports.grpc}") as c:
        yield c


@pytest.fixture(scope="module")
def model(repository):
    model = digits.create_model()
    model.load_state_dict(torch.load(repository / "source" / "digits_vit.pth", weights_only=True))
    return model.eval()


def infer(client, images: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    image = grpcclient.InferInput("image", list(images.shape), "UINT8")
    image.set_data_from_numpy(images)
    target = grpcclient.InferInput("target_class", list(targets.shape), "INT32")
    target.set_data_from_numpy(targets)
    wanted = [grpcclient.InferRequestedOutput(n) for n in ("logits", "attribution")]
    result = client.infer(MODEL, [image, target], outputs=wanted, client_timeout=60)
    return {n: result.as_numpy(n) for n in ("logits", "attribution")}


def relative(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def test_attribution_served_by_triton_equals_the_eager_reference(client, model, contract, heldout):
    images = heldout.images[:8]
    targets = np.asarray([[-1], [0], [9], [1], [-1], [2], [8], [3]], np.int32)
    got = infer(client, images, targets)
    logits, maps = attribution_reference.attribution_reference(
        model, torch.from_numpy(images), targets, contract.layout, contract.preprocessing
    )
    assert got["attribution"].shape == (8, *contract.layout.grid)
    assert np.abs(got["logits"] - logits.numpy()).max() <= 1e-4
    assert relative(got["attribution"], maps.numpy()) <= 1e-4


def test_concurrent_requests_each_get_their_own_class(client, model, contract, heldout):
    """Requests batched together by Triton with different targets: each map is its own."""
    images = heldout.images[8:16]
    targets = [int(i % 10) for i in range(8)]
    answers: dict[int, np.ndarray] = {}

    def one(i: int) -> None:
        target = np.asarray([[targets[i]]], np.int32)
        answers[i] = infer(client, images[i : i + 1], target)["attribution"][0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _, maps = attribution_reference.attribution_reference(
        model, torch.from_numpy(images), targets, contract.layout, contract.preprocessing
    )
    for i in range(8):
        assert relative(answers[i], maps[i].numpy()) <= 1e-4, i

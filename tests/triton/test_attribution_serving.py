"""The attribution model (vit_attribution_fp32) served by a real tritonserver, against the eager
reference (build/checks/attribution_reference.py): from the built default cpu repository, and from a
repository written here for a registers-only, non-square model (the mean-of-patch-rows reading)."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

from build import contract
from build.checks import attribution_reference
from build.graphs import export, modules
from build.model import digits
from build.repository import writer
from build.repository.writer import model_name
from local_triton.launcher import LocalTriton
from tests.build_stage.test_attribution import LAYOUTS, tiny_model
from tests.helpers import free_ports

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


def infer_batches(client, images: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """As a client must: in requests of at most the model's max_batch_size (4 on the cpu
    target, where a batch of attribution maps costs a backward pass each)."""
    limit = client.get_model_config(MODEL, as_json=True)["config"]["max_batch_size"]
    parts = [
        infer(client, images[i : i + limit], targets[i : i + limit])
        for i in range(0, len(images), limit)
    ]
    return {n: np.concatenate([p[n] for p in parts]) for n in ("logits", "attribution")}


def relative(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def test_attribution_served_by_triton_equals_the_eager_reference(client, model, contract, heldout):
    images = heldout.images[:8]
    targets = np.asarray([[-1], [0], [9], [1], [-1], [2], [8], [3]], np.int32)
    got = infer_batches(client, images, targets)
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


@pytest.fixture(scope="module")
def registers_server(tmp_path_factory):
    """A cpu repository holding only vit_attribution_fp32 of a tiny random-weight registers-only
    model (48x32 px, 6x4 grid), written by the build's own writer, served by a real Triton."""
    name, kwargs, _, _ = LAYOUTS["registers, no cls"]
    model = tiny_model(name, kwargs)
    spec = contract.ModelContract(
        model_name=name,
        origin="timm-random",
        preprocessing=contract.preprocessing(model),
        layout=contract.token_layout(model),
        labels=[f"class {i}" for i in range(model.num_classes)],
    )
    root = tmp_path_factory.mktemp("attribution-repository")
    version = root / "cpu" / MODEL / "1"
    version.mkdir(parents=True)
    graph = modules.AttributionGraph(model, spec.preprocessing, spec.layout)
    export.export_attribution(graph, spec.preprocessing.input_size, version / "model.onnx")
    (version.parent / "config.pbtxt").write_text(
        writer.config_text(spec, "cpu", "attribution", "fp32")
    )
    (version.parent / "labels.txt").write_text("\n".join(spec.labels) + "\n")
    shutil.copy2(writer.BUILD_DIR / "triton_python_model.py", version / "model.py")
    shutil.copy2(writer.BUILD_DIR / "runtimes.py", version / "runtimes.py")
    with (
        (root / "tritonserver.log").open("w") as log,
        LocalTriton(root / "cpu", free_ports(), log=log) as server,
        grpcclient.InferenceServerClient(f"127.0.0.1:{server.ports.grpc}") as c,
    ):
        yield c, model, spec


def test_registers_only_non_square_model_served_equals_the_reference(registers_server):
    client, model, spec = registers_server
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 3, *spec.preprocessing.input_size), dtype=np.uint8)
    targets = np.asarray([[-1], [6], [2]], np.int32)
    got = infer(client, images, targets)
    logits, maps = attribution_reference.attribution_reference(
        model, torch.from_numpy(images), targets, spec.layout, spec.preprocessing
    )
    assert spec.layout.query == "mean" and got["attribution"].shape == (3, 6, 4)
    assert np.abs(got["logits"] - logits.numpy()).max() <= 1e-4
    assert relative(got["attribution"], maps.numpy()) <= 1e-4

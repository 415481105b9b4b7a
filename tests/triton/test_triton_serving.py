"""A real tritonserver (from the nvidia-pytriton wheel) serving the built cpu repository."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from build.checks import rollout_reference
from build.graphs.modules import HEAD_FUSIONS, ClassifyGraph
from build.model import digits
from build.repository import runtimes
from build.repository.writer import PRECISIONS, TASKS, model_name, onnx_path
from local_triton.launcher import LocalTriton, Ports, TritonLaunchError
from tests.helpers import ROOT, free_ports


@pytest.fixture(scope="module")
def client(triton):
    with grpcclient.InferenceServerClient(f"127.0.0.1:{triton.ports.grpc}") as c:
        yield c


def infer(
    client, model: str, images: np.ndarray, outputs: list[str], ratios: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Explain models also get discard_ratio (FP32 [N, 1]; 0 unless `ratios` is given)."""
    image = grpcclient.InferInput("image", list(images.shape), "UINT8")
    image.set_data_from_numpy(images)
    inputs = [image]
    if "_explain_" in model:
        if ratios is None:
            ratios = np.zeros((len(images), 1), np.float32)
        ratio = grpcclient.InferInput("discard_ratio", list(ratios.shape), "FP32")
        ratio.set_data_from_numpy(ratios)
        inputs.append(ratio)
    # Every output, as the gateway asks (service/triton._wanted): Triton's response cache keys a
    # request by its inputs only, so a subset asked for here would be the answer a later request
    # with the same inputs gets, the gateway's included.
    result = client.infer(model, inputs, client_timeout=30)
    return {name: result.as_numpy(name) for name in outputs}


def outputs_of(task: str) -> list[str]:
    return ["logits"] + ([f"rollout_{f}" for f in HEAD_FUSIONS] if task == "explain" else [])


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_model_answers_and_matches_onnx_runtime(client, repository, heldout, task, precision):
    images = heldout.images[:16]
    got = infer(client, model_name(task, precision), images, outputs_of(task))
    ort = runtimes.create_runner("onnxruntime", str(onnx_path(repository, task, precision)))
    expected = ort.run(images)
    assert got["logits"].shape == (16, 10)
    if precision == "fp32":  # served by OpenVINO at f32: same numbers as ONNX Runtime
        np.testing.assert_allclose(got["logits"], expected["logits"], atol=1e-4)
        for name in outputs_of(task)[1:]:
            scale = np.abs(expected[name]).max()
            assert np.abs(got[name] - expected[name]).max() / scale <= 1e-4
    else:  # OpenVINO picks its own float type for these variants: same decisions, close numbers
        agree = (got["logits"].argmax(1) == expected["logits"].argmax(1)).mean()
        assert agree >= 15 / 16
        assert np.abs(got["logits"] - expected["logits"]).max() < 0.5


def test_rollout_served_by_triton_equals_the_pytorch_reference(
    client, repository, contract, heldout
):
    model = digits.create_model()
    model.load_state_dict(torch.load(repository / "source" / "digits_vit.pth", weights_only=True))
    model.eval()
    images = heldout.images[:8]
    normalised = ClassifyGraph(model, contract.preprocessing).normalise(torch.from_numpy(images))
    attentions = rollout_reference.extract_attentions(model, normalised)
    got = infer(client, model_name("explain", "fp32"), images, outputs_of("explain"))
    for fusion in HEAD_FUSIONS:
        ref = rollout_reference.rollout(attentions, fusion, contract.layout).numpy()
        assert np.abs(got[f"rollout_{fusion}"] - ref).max() / np.abs(ref).max() <= 1e-4


def test_discard_ratio_served_by_triton_equals_the_vit_explain_reference(
    client, repository, contract, heldout
):
    """One request with a different discard ratio per image: the python backend passes each
    image's ratio to the graph, and each map is vit-explain's rollout at that ratio."""
    model = digits.create_model()
    model.load_state_dict(torch.load(repository / "source" / "digits_vit.pth", weights_only=True))
    model.eval()
    images = heldout.images[8:16]
    ratios = [0.0, 0.5, 0.9, 0.25, 0.75, 0.1, 0.95, 0.6]
    normalised = ClassifyGraph(model, contract.preprocessing).normalise(torch.from_numpy(images))
    attentions = rollout_reference.extract_attentions(model, normalised)
    got = infer(
        client,
        model_name("explain", "fp32"),
        images,
        outputs_of("explain"),
        np.asarray(ratios, np.float32).reshape(-1, 1),
    )
    for fusion in HEAD_FUSIONS:
        ref = rollout_reference.rollout(attentions, fusion, contract.layout, ratios).numpy()
        sure = rollout_reference.selection_margin(attentions, fusion, ratios) >= 1e-6
        diff = np.abs(got[f"rollout_{fusion}"] - ref).max(axis=(1, 2)) / np.abs(ref).max()
        assert sure.sum() >= 4 and (diff[sure] <= 1e-4).all(), (fusion, diff, sure)
        # ...and not today's map: at ratio >= 0.5 each map moved well beyond float noise.
        plain = rollout_reference.rollout(attentions, fusion, contract.layout).numpy()
        moved = np.abs(got[f"rollout_{fusion}"] - plain).max(axis=(1, 2)) / np.abs(plain).max()
        assert moved[0] <= 1e-4 and (moved[np.asarray(ratios) >= 0.5] > 1e-3).all(), moved


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan")])
def test_discard_ratio_outside_0_1_is_refused_and_the_model_keeps_serving(client, heldout, bad):
    ratios = np.asarray([[bad]], np.float32)
    with pytest.raises(InferenceServerException, match=r"discard_ratio must be in \[0, 1\)"):
        infer(client, "vit_explain_fp32", heldout.images[:1], ["logits"], ratios)
    again = infer(client, "vit_explain_fp32", heldout.images[:1], ["logits"])
    assert again["logits"].shape == (1, 10)


def test_heldout_accuracy_through_triton(client, heldout):
    model = model_name("classify", "int8")
    batches = [heldout.images[i : i + 16] for i in range(0, len(heldout.images), 16)]
    logits = np.concatenate([infer(client, model, b, ["logits"])["logits"] for b in batches])
    assert (logits.argmax(1) == heldout.labels).mean() >= 0.95


def test_concurrent_requests_are_batched(client, heldout):
    """32 concurrent single-image requests run in fewer executions than requests. The images are
    ones no other test sends (inverted held-out digits): the classify models have Triton's
    response cache on, and a cache hit is not an inference."""
    model = model_name("classify", "fp32")
    images = 255 - heldout.images[:32]
    before = client.get_inference_statistics(model).model_stats[0]
    with ThreadPoolExecutor(max_workers=32) as pool:
        single = [images[i : i + 1] for i in range(32)]
        answers = list(pool.map(lambda image: infer(client, model, image, ["logits"]), single))
    after = client.get_inference_statistics(model).model_stats[0]
    assert all(a["logits"].shape == (1, 10) for a in answers)
    requests = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    hits = after.inference_stats.cache_hit.count - before.inference_stats.cache_hit.count
    assert requests + hits == 32
    assert requests >= 16, f"{hits} of 32 fresh images were cache hits"
    assert executions < requests, f"{executions} executions for {requests} requests: no batching"


@pytest.mark.parametrize(
    ("model", "images", "message"),
    [
        ("vit_classify_fp32", np.zeros((1, 3, 16, 16), np.uint8), "unexpected shape"),
        ("vit_classify_fp32", np.zeros((17, 3, 32, 32), np.uint8), "batch-size must be <= 16"),
        ("no_such_model", np.zeros((1, 3, 32, 32), np.uint8), "unknown model"),
    ],
)
def test_malformed_requests_get_errors_and_server_stays_up(client, model, images, message):
    with pytest.raises(InferenceServerException, match=message):
        infer(client, model, images, ["logits"])
    assert client.is_server_live() and client.is_server_ready()


def test_wrong_dtype_is_rejected(client):
    image = grpcclient.InferInput("image", [1, 3, 32, 32], "FP32")
    image.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(InferenceServerException, match="data-type"):
        client.infer("vit_classify_fp32", [image])
    assert client.is_server_ready()


def test_launcher_reports_a_taken_port(repository):
    ports = free_ports()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports.grpc))
        holder.listen()
        with pytest.raises(TritonLaunchError, match=f"gRPC port {ports.grpc} is already in use"):
            LocalTriton(repository / "cpu", Ports(ports.http, ports.grpc, ports.metrics)).start()


def test_launcher_starts_and_stops_cleanly(repository, tmp_path):
    log = (tmp_path / "triton.log").open("w")
    server = LocalTriton(repository / "cpu", free_ports(), log=log).start()
    assert server.process is not None and server.process.poll() is None
    server.stop()
    assert server.process.returncode == 0
    log.close()
    assert "successfully unloaded" in (tmp_path / "triton.log").read_text()


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_a_stop_signal_while_triton_loads_stops_it_and_exits_0(repository, tmp_path):
    """`docker stop` while the models load: the launcher stops tritonserver and exits 0. Before
    its handlers were installed first, SIGTERM before (or just after) ready killed the launcher
    by default action (exit -15; CI saw it) and left tritonserver, in its own session, running."""
    ports = free_ports()
    argv = ["--repository", str(repository / "cpu"), "--http-port", str(ports.http)]
    argv += ["--grpc-port", str(ports.grpc), "--metrics-port", str(ports.metrics)]
    with (tmp_path / "launcher.log").open("w") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "local_triton", *argv], cwd=ROOT, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 60
        while not (servers := children_of(launcher.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert servers, "tritonserver was not started"
        time.sleep(0.5)  # loading: nowhere near ready (9 models, OpenVINO compiles and warm-ups)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=90) == 0, (tmp_path / "launcher.log").read_text()
    finally:
        if launcher.poll() is None:
            launcher.kill()
    for pid in servers:  # reaped by the launcher: no orphan left running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

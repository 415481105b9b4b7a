"""make publish and make rollback on a real Triton with the real gateway in front, under open-loop
load: a new build becomes version 2 and version 1 comes back, with no failed request, and every
answer's predictions are those of the version it names. The new build is the default one with
its model.json relabelled ("v2-0".."v2-9", another model_name), so an answer's labels say which
version's contract the gateway used, and its model.version which version Triton ran."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import onnx
import pytest

from loadtest.openloop import RunResult, run, run_sync
from loadtest.targets import Body, HttpTarget
from local_triton.launcher import LocalTriton
from release.served import ReleaseError, read_models
from release.swap import Triton, publish, rollback, status
from tests.helpers import free_ports, png_bytes, start_gateway, stop_gateway

MODELS = ("vit_classify_fp32", "vit_explain_fp32")
REQUEST_TIMEOUT_S = 3  # the gateway's; the drain is this + its catalog refresh (2 s) + 1 s
DRAIN_S = REQUEST_TIMEOUT_S + 2 + 1
RATE = 8.0  # req/s, open loop, in 4-s runs while the swaps happen


def negate_logits(model_onnx: Path) -> None:
    """The classify graph answers -logits: its class ranking reversed, so an answer's top class
    says which version's weights ran. (The file is a hard link: replaced, never written into.)"""
    graph = onnx.load(model_onnx)
    for node in graph.graph.node:
        node.output[:] = ["raw_logits" if o == "logits" else o for o in node.output]
    graph.graph.node.append(onnx.helper.make_node("Neg", ["raw_logits"], ["logits"]))
    model_onnx.unlink()
    onnx.save(graph, model_onnx)


def copy_repository(source: Path, dest: Path, relabel: str | None = None) -> Path:
    """The served repository's two models (hard links: every write in release/ is a rename)."""
    for name in MODELS:
        shutil.copytree(
            source / "cpu" / name,
            dest / "cpu" / name,
            copy_function=os.link,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    raw = json.loads((source / "model.json").read_text())
    if relabel:
        raw["model_name"] = f"{raw['model_name']}-{relabel}"
        raw["labels"] = [f"{relabel}-{label}" for label in raw["labels"]]
    (dest / "model.json").write_text(json.dumps(raw))
    return dest


class Load:
    """Open-loop /classify load in a thread until stopped; every answer kept."""

    def __init__(self, url: str, bodies: list[Body]) -> None:
        self.answers: list[tuple[float, int, dict, int]] = []  # (monotonic, status, JSON, image)
        self.runs: list[RunResult] = []
        self.target = HttpTarget(
            "gateway", url, "/classify", bodies, {"top_k": "10"}, 30.0, on_answer=self._keep
        )
        self.bodies = bodies
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop)

    def _keep(self, index: int, answer: httpx.Response) -> None:
        body = answer.json() if answer.status_code == 200 else {"error": answer.text}
        self.answers.append((time.monotonic(), answer.status_code, body, index % len(self.bodies)))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.runs.append(run_sync(run(self.target, RATE, 4.0, progress=False)))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def failed(self) -> list[tuple[float, int, dict, int]]:
        return [a for a in self.answers if a[1] != 200]


def ready_versions(triton: Triton, name: str) -> set[int]:
    index = triton.client.get_model_repository_index(as_json=True)["models"]
    return {int(m["version"]) for m in index if m["name"] == name and m.get("state") == "READY"}


@pytest.fixture
def served(repository, tmp_path) -> Path:
    return copy_repository(repository, tmp_path / "served")


@pytest.fixture
def bodies(heldout) -> list[Body]:
    return [Body(png_bytes(image), "image/png") for image in heldout.images[:16]]


def test_publish_then_rollback_under_load_fails_no_request(served, repository, bodies, tmp_path):
    new = copy_repository(repository, tmp_path / "new", relabel="v2")
    negate_logits(new / "cpu" / "vit_classify_fp32" / "1" / "model.onnx")
    labels = {
        "1": set(json.loads((served / "model.json").read_text())["labels"]),
        "2": set(json.loads((new / "model.json").read_text())["labels"]),
    }
    steps: list[str] = []
    with (
        (tmp_path / "triton.log").open("w") as log,
        LocalTriton(served / "cpu", free_ports(), log=log) as server,
    ):
        control = Triton(f"127.0.0.1:{server.ports.grpc}")
        gateway = start_gateway(server.ports.grpc, served, REQUEST_TIMEOUT_S=str(REQUEST_TIMEOUT_S))
        try:
            with Load(gateway.url, bodies) as load:
                time.sleep(3)
                assert publish(served, new, "cpu", control, DRAIN_S, say=steps.append) == 2
                published = time.monotonic()
                assert {ready_versions(control, m) == {2} for m in MODELS} == {True}
                with httpx.Client(base_url=gateway.url, timeout=30) as client:
                    explained = client.post(
                        "/explain",
                        params={"output": "json"},
                        content=bodies[0].data,
                        headers={"Content-Type": "image/png"},
                    )
                    assert explained.status_code == 200, explained.text
                    assert explained.json()["model"]["version"] == "2"
                    top = explained.json()["results"][0]["predictions"][0]["label"]
                    assert top in labels["2"]
                    info = client.get("/info").json()
                    assert info["version"] == "2" and info["architecture"].endswith("-v2")
                time.sleep(3)
                rolling_back = time.monotonic()
                assert rollback(served, "cpu", control, drain_s=DRAIN_S, say=steps.append) == 1
                rolled_back = time.monotonic()
                time.sleep(3)
            with httpx.Client(base_url=gateway.url) as client:
                metrics = client.get("/metrics").text
        finally:
            stop_gateway(gateway)
        assert {ready_versions(control, m) == {1} for m in MODELS} == {True}

    answers = load.answers
    sent = sum(r.sent for r in load.runs)
    print(f"{sent} requests across publish and rollback; steps: {steps}")
    assert load.failed == [], f"{len(load.failed)} of {sent} failed: {load.failed[:3]}"
    assert len(answers) == sent and sent > 100
    # Every answer wholly one version's: its labels (the contract the gateway used) and its
    # ranking (the weights Triton ran: version 2's is version 1's reversed) both that version's
    ranking = {}  # image -> version 1's classes, best first
    for _, _, body, image in answers:
        if body["model"]["version"] == "1":
            ranking.setdefault(image, [p["class_index"] for p in body["results"][0]["predictions"]])
    for _, _, body, image in answers:
        version = body["model"]["version"]
        assert version in labels, body["model"]
        predictions = body["results"][0]["predictions"]
        assert {p["label"] for p in predictions} <= labels[version], body
        assert body["model"]["architecture"].endswith("-v2") == (version == "2")
        classes = [p["class_index"] for p in predictions]
        assert classes == (ranking[image] if version == "1" else ranking[image][::-1]), body
    # Once a swap returns, the old version is unloaded: every answer is the new version's
    between = [b["model"]["version"] for t, _, b, _ in answers if published < t < rolling_back]
    after = [b["model"]["version"] for t, _, b, _ in answers if t > rolled_back]
    assert between and set(between) == {"2"}
    assert after and set(after) == {"1"}
    assert re.search(r'gateway_model_version_answers_total\{model="vit_classify_fp32",'
                     r'version="2"\} [1-9]', metrics)  # fmt: skip
    assert status(served, "cpu")[0].startswith("vit_classify_fp32: serving 1, loaded [1]")
    assert [m.versions() for m in read_models(served / "cpu")] == [[1, 2], [1, 2]]


def test_a_build_triton_cannot_load_changes_nothing_served(served, repository, bodies, tmp_path):
    broken = copy_repository(repository, tmp_path / "broken", relabel="v2")
    onnx = broken / "cpu" / "vit_explain_fp32" / "1" / "model.onnx"
    onnx.unlink()  # a hard link to the default repository's file: never written through
    onnx.write_bytes(b"not an ONNX graph")
    with (
        (tmp_path / "triton.log").open("w") as log,
        LocalTriton(served / "cpu", free_ports(), log=log) as server,
    ):
        control = Triton(f"127.0.0.1:{server.ports.grpc}")
        gateway = start_gateway(server.ports.grpc, served, REQUEST_TIMEOUT_S=str(REQUEST_TIMEOUT_S))
        try:
            with Load(gateway.url, bodies) as load:
                time.sleep(2)
                with pytest.raises(ReleaseError, match=r"vit_explain_fp32: .*did not load") as e:
                    publish(served, broken, "cpu", control, DRAIN_S, say=print)
                assert "\n" not in str(e.value) and "Unable to read the model" in str(e.value)
                time.sleep(3)
        finally:
            stop_gateway(gateway)
        assert {ready_versions(control, m) == {1} for m in MODELS} == {True}
    assert load.failed == []
    assert {b["model"]["version"] for _, _, b, _ in load.answers} == {"1"}
    assert [m.versions() for m in read_models(served / "cpu")] == [[1], [1]]
    assert [m.serving() for m in read_models(served / "cpu")] == [1, 1]


def test_publish_with_a_triton_that_polls_its_repository(served, repository, tmp_path):
    new = copy_repository(repository, tmp_path / "new", relabel="v2")
    with (
        (tmp_path / "triton.log").open("w") as log,
        LocalTriton(served / "cpu", free_ports(), log=log, poll_s=1) as server,
    ):
        url = f"127.0.0.1:{server.ports.grpc}"
        with pytest.raises(ReleaseError, match=r"takes no load requests.*--poll"):
            publish(served, new, "cpu", Triton(url), drain_s=0, say=print)
        assert [m.versions() for m in read_models(served / "cpu")] == [[1], [1]]
        control = Triton(url, poll=True)
        assert publish(served, new, "cpu", control, drain_s=0, say=print) == 2
        assert {ready_versions(control, m) == {2} for m in MODELS} == {True}

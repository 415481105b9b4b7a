"""Faults against the real processes, under open-loop load: Triton SIGKILLed and restarted, the
gateway SIGTERMed, a gateway worker SIGKILLed mid-request.

Triton serves the probe repository here (tests/hardening/probe_repository.py, 224-px spec): the
faults are about processes, connections and the gateway's bookkeeping, and probe models load in a
second, where the real ones would only make each outage longer. A "slow" variant (1 s per batch)
keeps requests in flight long enough to be caught by a signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtest.openloop import BackgroundLoad, Shot
from local_triton.launcher import LocalTriton
from local_triton.procfs import children, established_on_port
from tests.hardening import probe_repository
from tests.hardening.hostile_images import encode, photo
from tests.helpers import free_ports, start_gateway, stop_gateway

DEADLINE_S = 2.0  # REQUEST_TIMEOUT_S of the gateways here
SLACK_S = 0.5  # answered no later than the deadline plus this
RECOVERY_S = 5.0  # served again within this of Triton being ready
SLOW_S = 1.0
RATE = 20.0  # requests/s of open-loop load


@pytest.fixture(scope="module")
def fault_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return probe_repository.write(
        tmp_path_factory.mktemp("faults"), variants={"fp32": 0.0, "slow": SLOW_S}
    )


@pytest.fixture
def fault_triton(fault_repository: Path, tmp_path: Path) -> Iterator[LocalTriton]:
    with (tmp_path / "tritonserver.log").open("w") as log:
        triton = LocalTriton(fault_repository / "cpu", free_ports(), log=log)
        try:
            yield triton.start()
        finally:
            triton.stop()
            _kill_group(triton)


def _kill_group(triton: LocalTriton) -> None:
    """Whatever is left of a SIGKILLed Triton's process group (its python backend stubs)."""
    if triton.process is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(triton.process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def image() -> bytes:
    return encode(photo(320, 240), "PNG")


def summary(shots: list[Shot]) -> str:
    counts: dict[str, int] = {}
    for s in shots:
        key = f"{s.status}:{s.code or s.error or ''}"
        counts[key] = counts.get(key, 0) + 1
    return f"{len(shots)} requests {counts}"


def test_triton_sigkill_under_load_every_request_answered_in_time_and_recovery(
    fault_repository: Path, fault_triton: LocalTriton, image: bytes
) -> None:
    gateway = start_gateway(
        fault_triton.ports.grpc, fault_repository, REQUEST_TIMEOUT_S=str(DEADLINE_S)
    )
    load = BackgroundLoad(gateway.url, image, RATE, timeout_s=30)
    try:
        load.start()
        time.sleep(2.0)
        killed_at = time.monotonic()
        assert fault_triton.process is not None
        fault_triton.process.send_signal(signal.SIGKILL)
        fault_triton.process.wait()
        _kill_group(fault_triton)
        time.sleep(1.0)  # an outage, under load
        fault_triton.start()  # returns once Triton's own readiness endpoint says ready
        ready_at = time.monotonic()
        time.sleep(RECOVERY_S + 3.0)
        shots = load.stop()
        gateway_alive = gateway.process.poll() is None
    finally:
        try:
            if load.is_alive():
                load.stop()
        finally:
            stop_gateway(gateway)
    print(f"\nTriton SIGKILL: {summary(shots)}; outage {ready_at - killed_at:.1f} s")
    assert gateway_alive, "the gateway died with Triton"
    unanswered = [s for s in shots if s.status == 0]
    assert not unanswered, f"not answered: {summary(unanswered)}"
    assert {s.status for s in shots} <= {200, 503}, summary(shots)
    for s in shots:
        if s.status == 503:
            assert s.code == "triton_unavailable" and s.retry_after, (s.code, s.retry_after)
    late = [s for s in shots if s.latency > DEADLINE_S + SLACK_S]
    assert not late, (
        f"{len(late)} answered past the deadline, worst {max(s.latency for s in late):.2f} s"
    )
    outage = [s for s in shots if killed_at + 0.2 <= s.scheduled <= ready_at - 0.2]
    assert outage and all(s.status == 503 for s in outage), summary(outage)
    served_again = [s.done for s in shots if s.status == 200 and s.scheduled >= ready_at]
    assert served_again and served_again[0] - ready_at <= RECOVERY_S, (
        f"first 200 {served_again[0] - ready_at if served_again else None} s after Triton ready"
    )
    after = [s for s in shots if s.scheduled >= ready_at + RECOVERY_S]
    assert after and all(s.status == 200 for s in after), summary(after)
    print(f"served again {served_again[0] - ready_at:.2f} s after Triton was ready")


def post(url: str, image: bytes, precision: str = "slow") -> httpx.Response:
    with httpx.Client(base_url=url, timeout=30) as client:  # a connection per request
        return client.post(
            "/classify",
            params={"precision": precision},
            content=image,
            headers={"Content-Type": "image/png"},
        )


def in_threads(count: int, fn, *args) -> tuple[list[threading.Thread], list]:
    results: list = []

    def run() -> None:
        try:
            results.append(fn(*args))
        except httpx.HTTPError as exc:
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    return threads, results


def test_gateway_sigterm_finishes_in_flight_and_refuses_new_cleanly(
    fault_repository: Path, fault_triton: LocalTriton, image: bytes
) -> None:
    gateway = start_gateway(fault_triton.ports.grpc, fault_repository, REQUEST_TIMEOUT_S="10")
    try:
        assert post(gateway.url, image, "fp32").status_code == 200
        threads, in_flight = in_threads(4, post, gateway.url, image)
        time.sleep(0.4)  # all four are waiting on the slow model
        gateway.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        refused_start = time.monotonic()
        _, late = in_threads(3, post, gateway.url, image, "fp32")
        time.sleep(1.0)
        for t in threads:
            t.join()
        code = gateway.process.wait(timeout=15)
    finally:
        stop_gateway(gateway)
    assert [getattr(r, "status_code", r) for r in in_flight] == [200] * 4, in_flight
    assert len(late) == 3, "a new request hung during shutdown"
    for r in late:  # refused at the door, or answered 503: never a hang or a cut-off answer
        if isinstance(r, httpx.Response):
            assert r.status_code == 503, r.text
        else:
            assert isinstance(r, httpx.ConnectError), repr(r)
    assert time.monotonic() - refused_start < 15
    # uvicorn re-raises the signal once its graceful shutdown is done: "killed by SIGTERM" (143 in
    # a shell) is its normal, clean exit; anything else (a crash, SIGKILL after a timeout) is not.
    assert code in (0, -signal.SIGTERM), f"the gateway exited with {code}"


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
    return total


def workers_of(gateway_pid: int, port: int) -> list[int]:
    """uvicorn's worker processes: the children that hold the listening socket's connections or
    were spawned by its supervisor (multiprocessing spawn, not the resource tracker)."""
    found = []
    for pid in children(gateway_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"resource_tracker" not in cmdline:
            found.append(pid)
    return found


def wait_for_workers(gateway_pid: int, port: int, count: int, timeout_s: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = workers_of(gateway_pid, port)
        if len(pids) == count:
            return pids
        time.sleep(0.2)
    raise AssertionError(f"{count} workers not running after {timeout_s} s")


def test_worker_killed_mid_request_metrics_stay_right(
    fault_repository: Path, fault_triton: LocalTriton, image: bytes
) -> None:
    gateway = start_gateway(
        fault_triton.ports.grpc, fault_repository, workers=2, REQUEST_TIMEOUT_S="10"
    )
    port = int(gateway.url.rsplit(":", 1)[1])
    try:
        wait_for_workers(gateway.process.pid, port, 2)
        for _ in range(6):
            assert post(gateway.url, image, "fp32").status_code == 200
        threads, _ = in_threads(1, post, gateway.url, image)
        deadline = time.monotonic() + 5
        victim = None
        while victim is None and time.monotonic() < deadline:
            busy = [
                p for p in workers_of(gateway.process.pid, port) if established_on_port(p, port)
            ]
            victim = busy[0] if busy else None
            time.sleep(0.05)
        assert victim is not None, "no worker holds the in-flight request"
        time.sleep(0.2)
        os.kill(victim, signal.SIGKILL)
        for t in threads:
            t.join()
        time.sleep(0.5)
        wait_for_workers(gateway.process.pid, port, 2)  # the supervisor replaced it
        for _ in range(10):
            assert post(gateway.url, image, "fp32").status_code == 200
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            text = client.get("/metrics").text
    finally:
        stop_gateway(gateway)
    served = metric(text, "gateway_requests_total", endpoint="classify", status="200")
    assert served == 16, f"classify 200 counted {served}, 16 were served"
    in_flight = metric(text, "gateway_requests_in_flight")
    assert in_flight == 0, f"gateway_requests_in_flight is {in_flight} with nothing in flight"
    errors = [
        line
        for line in text.splitlines()
        if line.startswith("gateway_requests_total{") and 'status="5' in line
    ]
    assert not errors, errors

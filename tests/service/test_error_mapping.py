"""Triton errors -> HTTP answers, unit-tested with a fake backend that implements the same
interface as service.triton.TritonBackend (the end-to-end tests use the real one)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException

from service.config import Settings
from service.errors import (
    Overloaded,
    TritonFailed,
    TritonQueueFull,
    TritonTimeout,
    TritonUnavailable,
)
from service.limits import InFlightLimiter
from service.main import create_app
from service.triton import Variant, translate
from tests.helpers import png_bytes

TRITON_ANSWERS = [
    ("Exceeds maximum queue size", "StatusCode.UNAVAILABLE", TritonQueueFull, 503),
    ("Request timeout expired", "StatusCode.UNAVAILABLE", TritonTimeout, 504),
    ("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED", TritonTimeout, 504),
    ("failed to connect to all addresses", "StatusCode.UNAVAILABLE", TritonUnavailable, 503),
    ("Request for unknown model: 'x' is not found", "StatusCode.NOT_FOUND", TritonUnavailable,
     503),
    ("inference failed: boom", "StatusCode.INTERNAL", TritonFailed, 502),
]  # fmt: skip


@pytest.mark.parametrize(("message", "status", "expected", "http"), TRITON_ANSWERS)
def test_translate(message, status, expected, http):
    error = translate(InferenceServerException(msg=message, status=status), retry_after_s=2)
    assert isinstance(error, expected) and error.status == http
    if http == 503:
        assert error.retry_after_s == 2


@pytest.mark.parametrize(("message", "status", "expected", "http"), TRITON_ANSWERS)
def test_the_stubs_grpc_errors_translate_as_tritonclients(message, status, expected, http):
    """The JPEG path calls the generated stub, whose errors are grpc.aio.AioRpcError: the same
    answer as tritonclient's InferenceServerException made from the same gRPC error (its
    status is str(code), its message the details). A real Triton's in test_triton_overload.py."""
    code = getattr(grpc.StatusCode, status.removeprefix("StatusCode."))
    assert str(code) == status
    raw = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=message)
    stub = translate(raw, retry_after_s=2)
    client = translate(InferenceServerException(msg=message, status=status), retry_after_s=2)
    assert type(stub) is type(client) is expected
    assert (stub.status, stub.code, stub.message, stub.retry_after_s) == (
        client.status,
        client.code,
        client.message,
        client.retry_after_s,
    )


class FakeTriton:
    """Same interface as TritonBackend; raises the given error from infer()."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error

    async def variant(self, task: str, precision: str, timeout_s: float) -> Variant:
        return Variant(f"vit_{task}_{precision}", task, precision, 16)

    async def infer(self, variant, images, outputs, deadline_s):
        if self.error is not None:
            raise translate(self.error, retry_after_s=3)
        return {"logits": np.zeros((len(images), 10), np.float32)}

    async def ready(self, models, timeout_s):
        return False, "Triton is unavailable: fake"

    async def close(self) -> None:
        pass


@pytest.fixture
def app_with(repository):
    def make(error: Exception | None) -> TestClient:
        app = create_app(Settings(model_metadata=repository / "model.json"))
        client = TestClient(app)
        client.__enter__()
        app.state.services.triton = FakeTriton(error)
        return client

    return make


@pytest.mark.parametrize(
    ("message", "status", "http", "code", "retry_after"),
    [
        ("Exceeds maximum queue size", "StatusCode.UNAVAILABLE", 503, "triton_queue_full", "3"),
        ("Request timeout expired", "StatusCode.UNAVAILABLE", 504, "triton_timeout", None),
        ("connection refused", "StatusCode.UNAVAILABLE", 503, "triton_unavailable", "3"),
        ("boom in /models/vit/1/model.py", "StatusCode.INTERNAL", 502, "triton_error", None),
    ],
)
def test_http_answer_for_triton_errors(app_with, heldout, message, status, http, code,
                                       retry_after):  # fmt: skip
    client = app_with(InferenceServerException(msg=message, status=status))
    r = client.post(
        "/classify", content=png_bytes(heldout.images[0]), headers={"Content-Type": "image/png"}
    )
    assert r.status_code == http
    assert r.json()["error"]["code"] == code
    assert message not in r.text  # Triton's own text is logged, never sent to clients
    assert r.headers.get("retry-after") == retry_after
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503 and not_ready.headers["retry-after"] == "1"
    client.__exit__(None, None, None)


def test_in_flight_limit_refuses_at_once():
    async def scenario() -> None:
        limiter = InFlightLimiter(limit=1, retry_after_s=4)
        async with limiter.slot():
            with pytest.raises(Overloaded) as refused:
                async with limiter.slot():
                    pass
            assert refused.value.retry_after_s == 4 and refused.value.status == 503
        async with limiter.slot():  # released again
            assert limiter.current == 1

    asyncio.run(scenario())


def test_in_flight_memory_is_bounded_too():
    """Requests are also counted by the memory they will hold (bodies, tensors, overlays)."""

    async def scenario() -> None:
        limiter = InFlightLimiter(limit=10, retry_after_s=1, max_bytes=100 * 2**20)
        async with limiter.slot(60 * 2**20):
            with pytest.raises(Overloaded, match=r"60 MiB in flight.*50 MiB more.*100 MiB"):
                async with limiter.slot(50 * 2**20):
                    pass
            async with limiter.slot(40 * 2**20):
                assert limiter.current_bytes == 100 * 2**20
        async with limiter.slot(500 * 2**20):  # alone, a request larger than the budget runs
            assert limiter.current == 1
        assert limiter.current == limiter.current_bytes == 0

    asyncio.run(scenario())

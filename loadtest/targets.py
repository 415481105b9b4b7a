"""What the generator can load: an HTTP image endpoint (the gateway, or the naive server), or
Triton directly over gRPC with preprocessed tensors (what Triton adds without the gateway).

Each target rotates through its corpus by request index, so a run sends a mix of images.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import numpy as np

from loadtest.openloop import Send


@dataclass(frozen=True)
class Body:
    data: bytes
    content_type: str


@dataclass(frozen=True)
class HttpTarget:
    """POST the image as the raw body (Content-Type image/...) to url + path."""

    name: str
    url: str
    path: str
    bodies: list[Body]
    params: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 30.0
    transport: httpx.AsyncBaseTransport | None = None  # for unit tests with a fake server
    # When given, the gateway's own per-stage timings of each 200 answer (JSON timings_ms or the
    # Server-Timing header) are summed here: stage -> [total ms, answers].
    stages: dict[str, list[float]] | None = None
    on_answer: Callable[[int, httpx.Response], None] | None = None  # (index, answer): each one

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Send]:
        if not self.bodies:
            raise ValueError("the target has no images to send")
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        async with httpx.AsyncClient(
            base_url=self.url, timeout=self.timeout_s, limits=limits, transport=self.transport
        ) as client:

            async def send(index: int) -> str:
                body = self.bodies[index % len(self.bodies)]
                try:
                    r = await client.post(
                        self.path,
                        params=self.params,
                        content=body.data,
                        headers={"Content-Type": body.content_type},
                    )
                except httpx.TimeoutException:
                    return "timeout"
                except httpx.TransportError as exc:
                    return type(exc).__name__
                if self.stages is not None and r.status_code == 200:
                    add_stages(self.stages, r)
                if self.on_answer is not None:
                    self.on_answer(index, r)
                return str(r.status_code)

            yield send


def add_stages(sums: dict[str, list[float]], response: httpx.Response) -> None:
    timings: dict[str, float] = {}
    if header := response.headers.get("server-timing"):
        for item in header.split(","):
            name, _, duration = item.strip().partition(";dur=")
            if duration:
                timings[name] = float(duration)
    elif response.headers.get("content-type", "").startswith("application/json"):
        timings = response.json().get("timings_ms") or {}
    for name, ms in timings.items():
        total = sums.setdefault(name, [0.0, 0])
        total[0] += ms
        total[1] += 1


@dataclass(frozen=True)
class TritonTarget:
    """One image per request ([1, 3, H, W] uint8, already preprocessed) to a Triton model over
    gRPC, as the gateway sends it; Triton's dynamic batcher may combine requests."""

    name: str
    url: str  # host:port of Triton's gRPC endpoint
    model: str
    tensors: list[np.ndarray]  # uint8 [3, H, W] each
    outputs: tuple[str, ...] = ("logits",)  # () = every output the model has
    timeout_s: float = 30.0

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Send]:
        from tritonclient.grpc import aio as grpcaio
        from tritonclient.utils import InferenceServerException

        if not self.tensors:
            raise ValueError("the target has no tensors to send")
        inputs = []  # serialised once: the generator's CPU goes to sending, not copying
        for tensor in self.tensors:
            one = grpcaio.InferInput("image", [1, *tensor.shape], "UINT8")
            one.set_data_from_numpy(np.ascontiguousarray(tensor[None]))
            inputs.append(one)
        requested = [grpcaio.InferRequestedOutput(name) for name in self.outputs]
        client = grpcaio.InferenceServerClient(self.url)
        try:
            # Inputs beside the image (the explain models' discard_ratio, FP32 [1]) get 0, as the
            # gateway sends by default. An unknown model has none: its calls count as errors.
            try:
                config = await client.get_model_config(self.model, as_json=True)
                declared = config["config"].get("input", [])
                extra = [i["name"] for i in declared if i["name"] != "image"]
            except InferenceServerException:
                extra = []
            scalars = []
            for name in extra:
                scalar = grpcaio.InferInput(name, [1, 1], "FP32")
                scalar.set_data_from_numpy(np.zeros((1, 1), np.float32))
                scalars.append(scalar)

            async def send(index: int) -> str:
                try:
                    await client.infer(
                        self.model,
                        [inputs[index % len(inputs)], *scalars],
                        outputs=requested or None,  # none named: every output
                        client_timeout=self.timeout_s,
                    )
                except InferenceServerException as exc:
                    return (exc.status() or "ERROR").removeprefix("StatusCode.")
                return "OK"

            yield send
        finally:
            await client.close()

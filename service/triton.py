"""The only module that talks to Triton (tritonclient.grpc.aio).

One client per worker process, created in the app lifespan and reused; keepalive on; reconnect
backoff capped so a restarted Triton is found again within seconds. Every Triton error is
translated here, once, into the service's own exceptions (service/errors.py).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import aio as grpcaio
from tritonclient.utils import InferenceServerException

from service import metrics
from service.errors import (
    InvalidParameter,
    ServiceError,
    TritonFailed,
    TritonQueueFull,
    TritonTimeout,
    TritonUnavailable,
)

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# Ping Triton every 30 s, also between requests, so a connection dropped by a NAT, a load balancer
# or a restarted pod is noticed in seconds. Triton must be started with flags that allow this
# (local_triton.launcher.GrpcKeepalive: idle pings permitted, 10 s minimum interval), or it
# answers with GOAWAY too_many_pings; compose and deploy/ pass the same flags.
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
CATALOG_REFRESH_S = 2.0


@dataclass(frozen=True)
class Variant:
    """One served model: task (classify/explain) x precision."""

    name: str
    task: str
    precision: str
    max_batch_size: int
    inputs: tuple[str, ...] = ()  # from Triton's model config (older builds lack some)


def channel_args(keepalive_ms: int = KEEPALIVE_TIME_MS) -> list[tuple[str, int]]:
    # Passing channel_args replaces tritonclient's defaults, so the message limits are re-added.
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # After Triton restarts, reconnect within ~2 s instead of gRPC's default of up to 120 s.
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


def translate(exc: Exception, retry_after_s: int) -> ServiceError:
    """Triton/gRPC error -> service error. Queue rejections reach us as UNAVAILABLE too."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return TritonTimeout("Triton did not answer within the request deadline")
    message = exc.message() if isinstance(exc, InferenceServerException) else str(exc)
    message = message or type(exc).__name__
    status = (exc.status() or "") if isinstance(exc, InferenceServerException) else ""
    if "Exceeds maximum queue size" in message:
        return TritonQueueFull("Triton's queue is full; retry later", retry_after_s)
    if "timeout expired" in message.lower() or "DEADLINE_EXCEEDED" in status:
        return TritonTimeout("Triton did not answer within the request deadline")
    if "UNAVAILABLE" in status or "unknown model" in message or "not ready" in message:
        return TritonUnavailable(f"Triton is unavailable: {message}", retry_after_s)
    return TritonFailed(f"Triton failed: {message}")


class TritonBackend:
    def __init__(self, url: str, prefix: str, retry_after_s: int) -> None:
        self._client = grpcaio.InferenceServerClient(url, channel_args=channel_args())
        self._pattern = re.compile(rf"^{re.escape(prefix)}_(classify|explain)_([a-z0-9]+)$")
        self._retry_after_s = retry_after_s
        self._variants: dict[tuple[str, str], Variant] = {}
        self._refreshed_at = 0.0
        self._refresh_lock = asyncio.Lock()

    async def close(self) -> None:
        await self._client.close()

    async def variants(
        self, timeout_s: float, force: bool = False
    ) -> dict[tuple[str, str], Variant]:
        """(task, precision) -> Variant for every READY model; cached, refreshed when stale."""
        async with self._refresh_lock:
            fresh = time.monotonic() - self._refreshed_at < CATALOG_REFRESH_S
            if self._variants and (fresh or not force):
                return self._variants
            try:
                index = await self._client.get_model_repository_index(
                    as_json=True, client_timeout=timeout_s
                )
                found = {}
                for model in index.get("models", []):
                    match = self._pattern.match(model.get("name", ""))
                    if not match or model.get("state") != "READY":
                        continue
                    config = await self._client.get_model_config(
                        model["name"], as_json=True, client_timeout=timeout_s
                    )
                    found[(match[1], match[2])] = Variant(
                        model["name"],
                        match[1],
                        match[2],
                        int(config["config"]["max_batch_size"]),
                        tuple(i["name"] for i in config["config"].get("input", [])),
                    )
            except Exception as exc:
                error = translate(exc, self._retry_after_s)
                metrics.TRITON_ERRORS.labels(error.code).inc()
                raise error from exc
            self._variants, self._refreshed_at = found, time.monotonic()
            return found

    async def variant(self, task: str, precision: str, timeout_s: float) -> Variant:
        variants = await self.variants(timeout_s)
        if (task, precision) not in variants:  # maybe loaded since: look again before refusing
            variants = await self.variants(timeout_s, force=True)
        if (task, precision) not in variants:
            available = sorted(p for t, p in variants if t == task)
            if not available:
                raise TritonUnavailable(
                    f"no {task} model is ready on Triton", retry_after_s=self._retry_after_s
                )
            raise InvalidParameter(
                f"precision {precision!r} is not served; available: {', '.join(available)}"
            )
        return variants[(task, precision)]

    async def infer(
        self,
        variant: Variant,
        images: np.ndarray,
        outputs: list[str],
        deadline_s: float,
        scalars: dict[str, float] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run a batch, split into chunks of max_batch_size sent together so Triton can batch
        them; answers within deadline_s or raises TritonTimeout. scalars: extra FP32 inputs of
        dims [1], the same value for every image (e.g. the explain model's discard_ratio)."""
        size = variant.max_batch_size
        chunks = [images[i : i + size] for i in range(0, len(images), size)]
        try:
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        self._infer_one(variant.name, c, outputs, deadline_s, scalars or {})
                        for c in chunks
                    )
                ),
                timeout=deadline_s + 0.5,
            )
        except Exception as exc:
            error = translate(exc, self._retry_after_s)
            metrics.TRITON_ERRORS.labels(error.code).inc()
            if isinstance(error, TritonUnavailable):
                self._variants = {}  # Triton restarted or unloaded models: look again next time
            raise error from exc
        return {name: np.concatenate([r[name] for r in results]) for name in outputs}

    async def _infer_one(
        self,
        model: str,
        images: np.ndarray,
        outputs: list[str],
        deadline_s: float,
        scalars: dict[str, float],
    ) -> dict[str, np.ndarray]:
        image = grpcaio.InferInput("image", list(images.shape), "UINT8")
        image.set_data_from_numpy(np.ascontiguousarray(images))
        inputs = [image]
        for name, value in scalars.items():
            scalar = grpcaio.InferInput(name, [len(images), 1], "FP32")
            scalar.set_data_from_numpy(np.full((len(images), 1), value, np.float32))
            inputs.append(scalar)
        result = await self._client.infer(
            model,
            inputs,
            outputs=[grpcaio.InferRequestedOutput(name) for name in outputs],
            client_timeout=deadline_s,  # gRPC deadline
            timeout=int(deadline_s * 1_000_000),  # Triton queue timeout (µs): rejected, not late
        )
        return {name: result.as_numpy(name) for name in outputs}

    async def ready(self, models: list[str], timeout_s: float) -> tuple[bool, str]:
        try:
            if not await self._client.is_server_ready(client_timeout=timeout_s):
                return False, "Triton is not ready"
            for name in models:
                if not await self._client.is_model_ready(name, client_timeout=timeout_s):
                    return False, f"model {name} is not ready"
        except Exception as exc:
            return False, translate(exc, self._retry_after_s).message
        return True, "ready"

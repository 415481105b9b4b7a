"""The only module that talks to Triton (tritonclient.grpc.aio).

One client per worker process, created in the app lifespan and reused; keepalive on; reconnect
backoff capped so a restarted Triton is found again within seconds. Every Triton error is
translated here, once, into the service's own exceptions (service/errors.py).

JPEG files go to Triton through the generated gRPC stub on a channel of their own, one
ModelInferRequest each (the file's bytes as they came), without tritonclient's per-call objects
(InferInput's numpy copy, InferRequestedOutput, InferResult). Measured, that saves little: 0.67
against 0.70 client core-ms per call, lower in 7 of 9 rounds (scripts/bench_jpeg_call.py,
docs/benchmarks.md); gRPC's own work is most of a call. Errors read as tritonclient reads them
(translate()), so both paths answer alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
from tritonclient.grpc import aio as grpcaio
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.grpc.model_config_pb2 import ModelConfig
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from service import metrics, tracing
from service.errors import (
    InvalidParameter,
    ServiceError,
    TritonFailed,
    TritonQueueFull,
    TritonTimeout,
    TritonUnavailable,
)
from service.model_info import CONTRACT_PARAMETER, SERVING_VERSION_PARAMETER, ModelMetadata
from service.names import INPUT_NAME, TASKS  # vit_<task>_<precision> on Triton

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# Ping Triton every 30 s, also between requests, so a connection dropped by a NAT, a load balancer
# or a restarted pod is noticed in seconds. Triton must be started with flags that allow this
# (local_triton.launcher.GrpcKeepalive: idle pings permitted, 10 s minimum interval), or it
# answers with GOAWAY too_many_pings; compose and deploy/ pass the same flags.
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
CATALOG_REFRESH_S = 2.0
FORCED_REFRESH_MIN_S = 0.5  # an unknown precision looks again at most this often

log = logging.getLogger("service.triton")


@dataclass(frozen=True)
class Variant:
    """One served model: task (classify, explain: rollout, attribution) x precision, and the
    version new requests go to. A request takes one Variant and keeps it: every Triton call it
    makes names that version, and its preprocessing and labels are that version's contract."""

    name: str
    task: str
    precision: str
    max_batch_size: int
    inputs: tuple[str, ...] = ()  # from Triton's model config (older builds lack some)
    version: str = ""  # "": Triton's choice (a repository that was never published to)
    latest: bool = True  # version is the newest loaded (what an ensemble's version -1 runs)
    contract: ModelMetadata | None = None  # that version's model.json; None: MODEL_METADATA's


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


def translate(exc: BaseException, retry_after_s: int) -> ServiceError:
    """Triton/gRPC error -> service error. Queue rejections reach us as UNAVAILABLE too. Triton's
    own text is logged here, never sent to clients (it names models, paths and internals)."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, TimeoutError):
        return TritonTimeout("Triton did not answer within the request deadline")
    if isinstance(exc, InferenceServerException):
        message, status = exc.message(), exc.status() or ""
    elif isinstance(exc, grpc.aio.AioRpcError):  # the stub's own error, as tritonclient reads it
        message, status = exc.details() or "", str(exc.code())
    else:
        message, status = str(exc), ""
    message = message or type(exc).__name__
    log.warning("Triton error %s: %s", status or type(exc).__name__, message)
    if "Exceeds maximum queue size" in message:
        return TritonQueueFull("Triton's queue is full; retry later", retry_after_s)
    if "timeout expired" in message.lower() or "DEADLINE_EXCEEDED" in status:
        return TritonTimeout("Triton did not answer within the request deadline")
    if "UNAVAILABLE" in status or "unknown model" in message or "not ready" in message:
        return TritonUnavailable("Triton or the model is unavailable; retry later", retry_after_s)
    return TritonFailed("Triton could not run the model; the gateway log has the details")


def _first_error(exc: BaseException) -> BaseException:
    """A TaskGroup's ExceptionGroup -> the error that made it fail (siblings were cancelled)."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _wanted(
    model: str, output: Callable[[str], np.ndarray | None], outputs: list[str]
) -> dict[str, np.ndarray]:
    """The outputs the caller wants, from an answer that carries every output of the model.

    The gateway asks Triton for all outputs, never a subset: Triton's response cache keys a
    request by model, version and inputs only, not by the outputs asked for, and a hit answers
    with the outputs the first request asked for. /explain asks for rollout_mean or rollout_max
    of the same image (head fusion, a display option of the demo page): with subsets, the second
    would be answered without its map. All outputs cost a few KiB per image (the maps are the
    patch grid); an answer that still lacks one (another client filled the cache) is a 502."""
    found: dict[str, np.ndarray] = {}
    for name in outputs:
        array = output(name)
        if array is None:
            log.warning(
                "Triton's answer from %s lacks output %s: another client asked for a subset of "
                "its outputs with the same inputs, and Triton's response cache answered with it "
                "(docs/operations.md 'Sharing one GPU': clients must ask for every output)",
                model,
                name,
            )
            raise TritonFailed("Triton's answer lacks an output; the gateway log has the details")
        found[name] = array
    return found


def _parameter(config: ModelConfig, name: str) -> str:
    """A string parameter of a model config; "" when the config has none of that name."""
    parameter = config.parameters.get(name)
    return parameter.string_value if parameter is not None else ""


class TritonBackend:
    def __init__(self, url: str, prefix: str, retry_after_s: int) -> None:
        self._client = grpcaio.InferenceServerClient(url, channel_args=channel_args())
        self._channel = grpc.aio.insecure_channel(url, options=channel_args())
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._pattern = re.compile(rf"^{re.escape(prefix)}_({'|'.join(TASKS)})_([a-z0-9]+)$")
        self._retry_after_s = retry_after_s
        self._variants: dict[tuple[str, str], Variant] = {}
        self._ready: frozenset[str] = frozenset()  # every READY model (JPEG ensembles included)
        self._refreshed_at = 0.0
        self._invalid = False  # a call failed in a way a stale catalog may explain
        self._refresh: asyncio.Future[dict[tuple[str, str], Variant]] | None = None
        self._contracts: dict[str, ModelMetadata] = {}  # parsed model.json by its text

    async def close(self) -> None:
        await self._client.close()
        await self._channel.close()

    async def variants(
        self, timeout_s: float, force: bool = False
    ) -> dict[tuple[str, str], Variant]:
        """(task, precision) -> Variant for every READY model, from a cache refreshed every
        CATALOG_REFRESH_S.

        The fast path never waits on Triton: a stale cache is answered at once while one refresh
        runs in the background. Callers wait only when there is nothing trustworthy to answer
        (empty, or invalidated by a failed call) or when force asks to look again now (an unknown
        precision; at most every FORCED_REFRESH_MIN_S); they all await the same refresh, so while
        Triton hangs each waits one timeout, not one per caller ahead of it."""
        age = time.monotonic() - self._refreshed_at
        if self._variants and not self._invalid:
            if age < (FORCED_REFRESH_MIN_S if force else CATALOG_REFRESH_S):
                return self._variants
            if not force:
                self._start_refresh(timeout_s)
                return self._variants
        return await asyncio.shield(self._start_refresh(timeout_s))

    def _start_refresh(self, timeout_s: float) -> asyncio.Future[dict[tuple[str, str], Variant]]:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._load(timeout_s))
            # A background refresh nobody awaits: its error is counted in _load, not lost.
            self._refresh.add_done_callback(lambda f: f.cancelled() or f.exception())
        return self._refresh

    async def _load(self, timeout_s: float) -> dict[tuple[str, str], Variant]:
        # Protobuf answers, read field by field: as_json=True runs protobuf's pure-Python JSON
        # printer over each config (10 CPU-ms a refresh for the default repository's 9 models,
        # every CATALOG_REFRESH_S: 0.25 core-ms per request at 20 req/s; docs/benchmarks.md).
        try:
            index = await self._client.get_model_repository_index(client_timeout=timeout_s)
            versions: dict[str, list[int]] = {}  # READY name -> its READY versions
            for model in index.models:
                if model.state == "READY":
                    versions.setdefault(model.name, []).append(
                        int(model.version) if model.version.isdigit() else -1
                    )
            found = {}
            for name, loaded in versions.items():
                match = self._pattern.match(name)
                if not match:
                    continue
                answer = await self._client.get_model_config(name, client_timeout=timeout_s)
                variant = self._variant(name, match[1], match[2], answer.config, max(loaded))
                if variant:
                    found[(variant.task, variant.precision)] = variant
        except Exception as exc:
            error = translate(exc, self._retry_after_s)
            metrics.TRITON_ERRORS.labels(error.code).inc()
            raise error from exc
        self._variants, self._refreshed_at, self._invalid = found, time.monotonic(), False
        self._ready = frozenset(versions)
        return found

    def _variant(
        self, name: str, task: str, precision: str, config: ModelConfig, newest: int
    ) -> Variant | None:
        """The Variant a model's config describes. make publish (release/) puts the version to
        serve and its model.json in the config's parameters; Triton swaps a model's config only
        once every version it names has loaded, so a config that names a version is one whose
        version is READY (a repository never published to names none: its newest version)."""
        serving = _parameter(config, SERVING_VERSION_PARAMETER)
        version = serving or (str(newest) if newest >= 0 else "")
        contract = None
        text = _parameter(config, CONTRACT_PARAMETER)
        if text:
            contract = self._contracts.get(text)
            if contract is None:
                try:
                    contract = ModelMetadata.from_dict(json.loads(text))
                except (KeyError, TypeError, ValueError) as exc:
                    log.error("%s: its config's %s is not a valid model.json (%s): not served",
                              name, CONTRACT_PARAMETER, exc)  # fmt: skip
                    return None
                if len(self._contracts) >= 8:  # versions published since start: keep a few
                    self._contracts.clear()
                self._contracts[text] = contract
        if version.isdigit():
            metrics.SERVED_VERSION.labels(name).set(int(version))
        return Variant(
            name, task, precision,
            config.max_batch_size,  # 0: no batching
            tuple(i.name for i in config.input),
            version, version == str(newest), contract,
        )  # fmt: skip

    async def keep_fresh(self, timeout_s: float) -> None:
        """Refreshes the catalog every CATALOG_REFRESH_S, also while no request comes, so a
        version make publish switched to is followed within that time (its drain counts on it:
        the version it unloads gets no new request after CATALOG_REFRESH_S). Runs until
        cancelled; a failed refresh is counted (_load) and the next one tries again."""
        while True:
            with contextlib.suppress(ServiceError):
                await self._start_refresh(timeout_s)
            await asyncio.sleep(CATALOG_REFRESH_S)

    def is_ready(self, model: str) -> bool:
        """Whether the catalog (refreshed by variants()) lists `model` as READY."""
        return model in self._ready

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
                f"precision {precision!r} is not served"
                + ("" if task == "classify" else f" for {task}")
                + f"; available: {', '.join(available)}"
            )
        return variants[(task, precision)]

    async def infer(
        self,
        variant: Variant,
        images: np.ndarray,
        outputs: list[str],
        deadline_s: float,
        scalars: dict[str, np.generic] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run a batch, split into chunks of max_batch_size (one image per call for a model that
        does not batch) sent together so Triton can batch them; answers within deadline_s or
        raises TritonTimeout. When one chunk fails the others are cancelled, on Triton too.
        scalars: extra inputs of dims [1], the same value for every image, typed by their numpy
        type (the explain model's discard_ratio: np.float32, FP32; the attribution model's
        target_class: np.int32, INT32)."""
        size = max(1, variant.max_batch_size)
        chunks = [images[i : i + size] for i in range(0, len(images), size)]
        try:
            async with asyncio.timeout(deadline_s + 0.5), asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(
                        self._infer_one(variant, c, outputs, deadline_s, scalars or {})
                    )
                    for c in chunks
                ]
        except Exception as exc:
            cause = _first_error(exc)
            error = self._failed(cause)
            if "unknown model" in str(cause):  # gone since the catalog was read: 422 if so
                await self.variant(variant.task, variant.precision, CATALOG_REFRESH_S)
            raise error from exc
        results = [task.result() for task in tasks]
        return {name: np.concatenate([r[name] for r in results]) for name in outputs}

    def _failed(self, cause: BaseException) -> ServiceError:
        error = translate(cause, self._retry_after_s)
        metrics.TRITON_ERRORS.labels(error.code).inc()
        if not isinstance(error, TritonQueueFull | TritonTimeout):
            self._invalid = True  # restarted, unloaded or reconfigured: look again first
        return error

    async def infer_jpeg(
        self, model: str, input_name: str, files: list[bytes], outputs: list[str], deadline_s: float
    ) -> dict[str, np.ndarray]:
        """JPEG files to a JPEG ensemble (service/jpeg_path.py): one request per file, UINT8
        [1, length], all in flight at once, so Triton's dynamic batcher batches files of
        different lengths (allow_ragged_batch) and no file is padded. Errors as infer()'s."""
        try:
            async with asyncio.timeout(deadline_s + 0.5):
                if len(files) == 1:  # most requests: no task to schedule
                    results = [
                        await self._infer_file(model, input_name, files[0], outputs, deadline_s)
                    ]
                else:
                    async with asyncio.TaskGroup() as group:
                        tasks = [
                            group.create_task(
                                self._infer_file(model, input_name, f, outputs, deadline_s)
                            )
                            for f in files
                        ]
                    results = [task.result() for task in tasks]
        except Exception as exc:
            raise self._failed(_first_error(exc)) from exc
        return {name: np.concatenate([r[name] for r in results]) for name in outputs}

    async def _infer_file(
        self, model: str, input_name: str, data: bytes, outputs: list[str], deadline_s: float
    ) -> dict[str, np.ndarray]:
        request = service_pb2.ModelInferRequest(model_name=model)
        request.inputs.add(name=input_name, datatype="UINT8", shape=(1, len(data)))
        # no request.outputs: every output, as _wanted() explains
        # Triton's queue timeout (µs), as tritonclient's infer(timeout=...) sends it
        request.parameters["timeout"].int64_param = int(deadline_s * 1_000_000)
        request.raw_input_contents.append(data)
        metadata = tracing.grpc_metadata()  # Triton's spans join the request's trace
        with tracing.client_span(model, 1):
            response = await self._stub.ModelInfer(
                request,
                timeout=deadline_s,
                metadata=tuple(metadata.items()) if metadata else None,
            )
        found = {
            tensor.name: np.frombuffer(raw, triton_to_np_dtype(tensor.datatype)).reshape(
                tensor.shape
            )
            for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True)
        }
        return _wanted(model, found.get, outputs)

    async def _infer_one(
        self,
        variant: Variant,
        images: np.ndarray,
        outputs: list[str],
        deadline_s: float,
        scalars: dict[str, np.generic],
    ) -> dict[str, np.ndarray]:
        image = grpcaio.InferInput(INPUT_NAME, list(images.shape), "UINT8")
        image.set_data_from_numpy(np.ascontiguousarray(images))
        inputs = [image]
        for name, value in scalars.items():
            scalar = grpcaio.InferInput(name, [len(images), 1], np_to_triton_dtype(value.dtype))
            scalar.set_data_from_numpy(np.full((len(images), 1), value, value.dtype))
            inputs.append(scalar)
        with tracing.client_span(variant.name, len(images)):
            result = await self._client.infer(
                variant.name,
                inputs,
                model_version=variant.version,  # the request's version, all its calls
                client_timeout=deadline_s,  # gRPC deadline
                timeout=int(deadline_s * 1_000_000),  # Triton queue timeout (µs): rejected
                headers=tracing.grpc_metadata(),  # Triton's spans join the request's trace
            )  # every output: see _wanted()
        return _wanted(variant.name, result.as_numpy, outputs)

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

"""What handlers declare they need; built once in the app lifespan (service/main.py)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service.config import Settings
from service.inputs import Upload
from service.jpeg_path import JpegPath
from service.limits import InFlightLimiter, request_bytes
from service.model_info import ModelMetadata
from service.pipeline import Pipeline
from service.triton import TritonBackend, Variant


@dataclass
class Services:
    settings: Settings
    metadata: ModelMetadata  # MODEL_METADATA's: until Triton's configs name a version's own
    triton: TritonBackend
    executor: ThreadPoolExecutor
    limiter: InFlightLimiter
    jpeg: JpegPath | None = None  # JPEG bytes to Triton's DALI ensembles, where built
    _pipelines: dict[int, Pipeline] = field(default_factory=dict)

    def contract(self, variant: Variant) -> ModelMetadata:
        """The model.json of the version the variant names (make publish), else MODEL_METADATA's."""
        return variant.contract or self.metadata

    async def variant(self, task: str, precision: str | None) -> Variant:
        """The model serving `task` at `precision` (DEFAULT_PRECISION when None) and the version
        new requests go to; InvalidParameter if that precision is not served, TritonUnavailable
        if none is."""
        settings = self.settings
        return await self.triton.variant(
            task, precision or settings.default_precision, settings.readiness_timeout_s
        )

    def pipeline(self, variant: Variant) -> Pipeline:
        """Preprocessing and labels of the variant's version: a request served wholly by it."""
        contract = self.contract(variant)
        pipeline = self._pipelines.get(id(contract))
        if pipeline is None:  # a version published since start (the Pipeline keeps it alive)
            if len(self._pipelines) >= 8:
                self._pipelines.clear()
            pipeline = Pipeline(self.settings, contract, self.executor)
            self._pipelines[id(contract)] = pipeline
        return pipeline


async def get_services(request: Request) -> Services:
    # async: FastAPI runs a plain def dependency in its thread pool, a thread hop per request.
    return request.app.state.services


class Admission:
    """A request's in-flight slot, taken by the handler once the body is read (a slow upload
    holds none) and sized by the memory the request will hold; released when the request ends."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._nbytes: int | None = None

    def enter(self, uploads: list[Upload], variant: Variant, display_side: int | None) -> float:
        """Takes the slot (or raises Overloaded); returns the time the request's deadline
        (REQUEST_TIMEOUT_S) counts from: the end of the upload."""
        spec = self.services.contract(variant).spec
        nbytes = request_bytes(
            sum(len(u.data) for u in uploads), len(uploads), 3 * spec.height * spec.width,
            display_side,
        )  # fmt: skip
        self.services.limiter.acquire(nbytes)
        self._nbytes = nbytes
        return time.perf_counter()

    def release(self) -> None:
        if self._nbytes is not None:
            self.services.limiter.release(self._nbytes)
            self._nbytes = None


ServicesDep = Annotated[Services, Depends(get_services)]

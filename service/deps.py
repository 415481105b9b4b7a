"""What handlers declare they need; built once in the app lifespan (service/main.py)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.config import Settings
from service.limits import InFlightLimiter
from service.model_info import ModelMetadata
from service.pipeline import Pipeline
from service.triton import TritonBackend


@dataclass
class Services:
    settings: Settings
    metadata: ModelMetadata
    triton: TritonBackend
    executor: ThreadPoolExecutor
    pipeline: Pipeline
    limiter: InFlightLimiter


def get_services(request: Request) -> Services:
    return request.app.state.services


async def inference_slot(request: Request) -> AsyncIterator[float]:
    """Holds one in-flight slot for the request; yields the request's start time."""
    services: Services = request.app.state.services
    async with services.limiter.slot():
        yield time.perf_counter()


ServicesDep = Annotated[Services, Depends(get_services)]
InferenceSlot = Annotated[float, Depends(inference_slot)]

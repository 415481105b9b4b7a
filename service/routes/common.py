"""Small pieces both inference routes use."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Query

from service.config import Settings
from service.deps import Services
from service.schemas import ServedModel
from service.triton import Variant

MIN_TRITON_BUDGET_S = 0.05

PRECISION_QUERY = Annotated[
    str | None,
    Query(
        pattern="^[a-z0-9]{1,16}$",
        description="model variant, e.g. fp32, fp16, int8: whatever the repository serves "
        "(default: DEFAULT_PRECISION, fp32 unless configured)",
    ),
]


def deadline_s(settings: Settings, started: float) -> float:
    """What is left of the request's deadline for the Triton call."""
    spent = time.perf_counter() - started
    return max(MIN_TRITON_BUDGET_S, settings.request_timeout_s - spent)


def served_model(services: Services, variant: Variant) -> ServedModel:
    return ServedModel(
        name=variant.name,
        version="1",
        precision=variant.precision,
        architecture=services.metadata.model_name,
    )

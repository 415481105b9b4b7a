"""Small pieces both inference routes use: their one dependency and their answers' model block."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from service import metrics
from service.deps import Admission, Services
from service.errors import InvalidParameter
from service.queries import NUMBER_PARAMETERS
from service.schemas import ServedModel
from service.triton import Variant

_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def check_plain_numbers(request: Request) -> None:
    """Number parameters (those the query models read as int or float, service/queries.py)
    exactly as written in ASCII. Pydantic alone also reads ' 9', '9\u00a0'
    (a no-break space) and '1_0' as numbers, which the OpenAPI types do not allow (schemathesis
    found the no-break space accepted). Checked on the raw query so the schema's own bounds stay
    as they are."""
    for name in NUMBER_PARAMETERS:
        for value in request.query_params.getlist(name):
            if not _PLAIN_NUMBER.fullmatch(value):
                raise InvalidParameter(
                    f"{name}: must be a plain number (ASCII digits, no spaces or underscores)"
                )


async def inference_slot(request: Request) -> AsyncIterator[Admission]:
    """The one dependency of /classify and /explain (FastAPI spends ~0.1 core-ms on each
    dependency of each request): the number parameters checked as written, before FastAPI
    validates them; then the request's Admission, with the services, released when it ends."""
    check_plain_numbers(request)
    slot = Admission(request.app.state.services)
    try:
        yield slot
    finally:
        slot.release()


InferenceSlot = Annotated[Admission, Depends(inference_slot)]


def served_model(services: Services, variant: Variant) -> ServedModel:
    """The answer's model block; counts the answer under its model and version."""
    version = variant.version or "1"  # "": a Triton of before versions served its only one
    metrics.MODEL_VERSION_ANSWERS.labels(variant.name, version).inc()
    return ServedModel(
        name=variant.name,
        version=version,
        precision=variant.precision,
        architecture=services.contract(variant).model_name,
    )

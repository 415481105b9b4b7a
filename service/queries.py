"""The query parameters of /classify and /explain as models (FastAPI's query parameter models):
their fields' constraints, descriptions and examples are the OpenAPI document's parameters, in
this order. A field is declared `name: T = Query(default, ...)` (not Annotated[T, Query(...)]): so
it keeps its Query and the examples only a Query carries to the OpenAPI page."""

from __future__ import annotations

from typing import Any, Literal, get_args

from fastapi import Query
from pydantic import BaseModel

from service import discard_ratio, explain_method, names
from service.colormaps import COLORMAPS, DEFAULT_COLORMAP
from service.explain_method import Method

HeadFusion = Literal[names.HEAD_FUSIONS]  # type: ignore[valid-type]
Colormap = Literal[COLORMAPS]  # type: ignore[valid-type]
Output = Literal["png", "jpeg", "webp", "json"]


PRECISION_PATTERN = "^[a-z0-9]{1,16}$"
TOP_K_DEFAULT, TOP_K_MAX = 5, 1000


def _precision() -> Any:
    return Query(
        None,
        pattern=PRECISION_PATTERN,
        description="model variant, e.g. fp32, fp16, int8: whatever the repository serves "
        "(default: DEFAULT_PRECISION, fp32 unless configured)",
    )


def _top_k(description: str | None = None) -> Any:
    return Query(TOP_K_DEFAULT, ge=1, le=TOP_K_MAX, description=description)


class ClassifyQuery(BaseModel):
    top_k: int = _top_k("classes per image (capped at the model's class count)")
    precision: str | None = _precision()


class ExplainQuery(BaseModel):
    method: Method = Query(
        "rollout",
        description="rollout: attention rollout, where the model looked (one map for every "
        "class); attribution: Chefer et al. transformer attribution, what speaks for one class "
        "(target_class)",
        openapi_examples={
            "rollout": {"summary": "class-agnostic attention rollout", "value": "rollout"},
            "attribution": {"summary": "class-specific attribution", "value": "attribution"},
        },
    )
    target_class: str | None = Query(
        None,
        min_length=1,
        max_length=200,
        description=explain_method.DESCRIPTION,
        openapi_examples={
            "index": {"summary": "a class index", "value": "3"},
            "label": {"summary": "a label, as the model's labels write it", "value": "label"},
        },
    )
    head_fusion: HeadFusion = Query(
        "mean", description="rollout only: how attention heads are fused"
    )
    output: Output | None = Query(
        None,
        description="png, jpeg, webp: the heatmap over the image (one image per request); json: "
        "the 0-1 grid per image with predictions. Default: from the Accept header (image/png, "
        "image/jpeg, image/webp, application/json), png when it names none",
    )
    alpha: float = Query(0.5, ge=0.0, le=1.0, description="heatmap opacity")
    colormap: Colormap = Query(DEFAULT_COLORMAP, description="perceptual colormap")
    max_side: int | None = Query(
        None, ge=16, le=8192, description="cap on the PNG's longer side (pixels)"
    )
    include_png: bool = Query(False, description="json: add the overlay PNG (base64)")
    top_k: int = _top_k()
    precision: str | None = _precision()
    discard_ratio: float = Query(
        0.0, ge=0.0, lt=1.0, description="rollout only: " + discard_ratio.DESCRIPTION
    )


def number_parameters(*models: type[BaseModel]) -> tuple[str, ...]:
    """The fields the models read as numbers: int or float, optional or not (bool is neither)."""
    found: list[str] = []
    for model in models:
        for name, field in model.model_fields.items():
            kinds = get_args(field.annotation) or (field.annotation,)
            if any(kind in (int, float) for kind in kinds) and name not in found:
                found.append(name)
    return tuple(found)


# Number-valued query parameters of /classify and /explain, checked as written (routes/common.py)
NUMBER_PARAMETERS = number_parameters(ClassifyQuery, ExplainQuery)

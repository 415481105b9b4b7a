"""Response bodies; their docstrings and field descriptions become the OpenAPI page."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    label: str
    class_index: int
    probability: float = Field(description="softmax over all classes")


class ServedModel(BaseModel):
    name: str = Field(description="Triton model, e.g. vit_classify_fp32")
    version: str
    precision: str
    architecture: str = Field(description="the timm model it was built from")


class ImageResult(BaseModel):
    index: int = Field(description="position of the image in the request")
    filename: str | None
    width: int = Field(description="after EXIF orientation")
    height: int
    predictions: list[Prediction]


class ClassifyResponse(BaseModel):
    """One result per image, in request order."""

    model: ServedModel
    results: list[ImageResult]
    timings_ms: dict[str, float] = Field(
        description="decode, preprocess (summed over images), triton, postprocess, total"
    )


class Heatmap(BaseModel):
    method: Literal["rollout", "attribution"] = Field(
        description="rollout: where the model looked (one map for every class); attribution: "
        "what speaks for explained_class (Chefer et al. transformer attribution)"
    )
    explained_class: Prediction | None = Field(
        None,
        description="attribution: the class the map explains (target_class, or the top-1), "
        "with its probability; null for rollout, which is class-agnostic",
    )
    head_fusion: str | None = Field(description="rollout: how heads were fused; null otherwise")
    discard_ratio: float | None = Field(
        0.0, description="rollout: attention filtered out per layer (0 = none); null otherwise"
    )
    shape: tuple[int, int] = Field(description="patch grid (rows, cols)")
    grid: list[list[float]] = Field(
        description="the map (rollout or attribution relevance), min-max normalised to 0-1"
    )
    crop_box: tuple[float, float, float, float] = Field(
        description="left, top, right, bottom of the region the model saw, in image pixels"
    )
    png_base64: str | None = Field(None, description="overlay PNG when include_png=true")


class ExplainResult(ImageResult):
    heatmap: Heatmap


class ExplainResponse(BaseModel):
    model: ServedModel
    results: list[ExplainResult]
    timings_ms: dict[str, float]


class ErrorBody(BaseModel):
    code: str = Field(description="machine-readable, e.g. corrupt_image, triton_unavailable")
    message: str = Field(description="what went wrong, for a person")


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
    detail: str | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "corrupt image or malformed body"},
    401: {"model": ErrorResponse, "description": "API_KEY is set and the key is missing/wrong"},
    408: {"model": ErrorResponse, "description": "body not received within BODY_TIMEOUT_S"},
    413: {
        "model": ErrorResponse,
        "description": "body, image pixels, request pixels, form field or file count over limit",
    },
    415: {"model": ErrorResponse, "description": "not an image / unsupported format or type"},
    422: {"model": ErrorResponse, "description": "invalid parameter"},
    502: {"model": ErrorResponse, "description": "Triton answered with an error"},
    503: {
        "model": ErrorResponse,
        "description": "overloaded (requests or memory in flight), deadline passed while busy, "
        "Triton down/not ready or its queue full (Retry-After)",
        "headers": {
            "Retry-After": {
                "description": "seconds to wait before retrying",
                "schema": {"type": "integer"},
            }
        },
    },
    504: {"model": ErrorResponse, "description": "Triton did not answer within the deadline"},
}

IMAGE_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "One or more images as multipart files (any field name), or one image "
        "as the raw body. JPEG, PNG, WebP, GIF (first frame) or BMP; the bytes decide.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,  # maxItems (MAX_FILES) is set in service/main.py
                        }
                    },
                    "required": ["file"],
                },
                # The media types a file part may carry (tools such as schemathesis read it).
                "encoding": {
                    "file": {
                        "contentType": "image/jpeg, image/png, image/webp, image/gif, image/bmp"
                    }
                },
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


class ExplainModelInfo(BaseModel):
    precision: str
    name: str = Field(description="Triton model, e.g. vit_explain_fp32")
    discard_ratio: bool = Field(description="takes discard_ratio > 0 (built with that input)")


class Info(BaseModel):
    """What the gateway serves right now: the demo page builds its controls from this."""

    architecture: str
    input_size: tuple[int, int] = Field(description="height, width the model sees")
    labels: int = Field(description="number of classes")
    default_precision: str
    version: str | None = Field(
        None, description="the version the default classify model serves (make publish)"
    )
    classify: list[str] = Field(description="precisions with a ready classify model")
    explain: list[ExplainModelInfo] = Field(description="ready explain (rollout) models")
    attribution: list[str] = Field(
        description="precisions with a ready attribution model (method=attribution)"
    )
    triton_error: str | None = Field(None, description="why the lists are empty, if they are")
    head_fusions: list[str]
    outputs: list[str] = Field(description="output= values of /explain")
    colormaps: dict[str, str] = Field(
        description="name -> 256 RGB entries as 1536 hex digits, as the server renders them"
    )
    default_colormap: str
    limits: dict[str, int] = Field(
        description="max_files, max_body_bytes, max_image_pixels, max_heatmap_side"
    )

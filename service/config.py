"""One typed settings object, read from the environment at start-up (not at import)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    triton_url: str = Field("127.0.0.1:8001", description="Triton gRPC host:port")
    model_metadata: Path = Field(
        Path("model_repository/model.json"), description="model.json written by the build stage"
    )
    model_prefix: str = "vit"
    default_precision: str = Field("fp32", description="variant used when a request names none")

    request_timeout_s: float = Field(
        10.0, gt=0, description="deadline from the end of the upload: decode, Triton, answer"
    )
    readiness_timeout_s: float = Field(2.0, gt=0)
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 503 answers")

    max_body_bytes: int = Field(20 * 1024 * 1024, gt=0, description="whole request body")
    body_timeout_s: float = Field(
        30.0, gt=0, description="the whole body must arrive within this (else 408)"
    )
    max_files: int = Field(16, ge=1, description="images in one multipart request")
    max_image_pixels: int = Field(40_000_000, gt=0, description="width*height of one image")
    max_aspect_ratio: float = Field(
        50.0, ge=1, description="longer side / shorter side of one image (else 422)"
    )
    max_request_pixels: int = Field(
        100_000_000, gt=0, description="width*height summed over a request's images"
    )
    max_in_flight: int = Field(64, ge=1, description="concurrent /classify + /explain requests")
    max_in_flight_mb: int = Field(
        1024, ge=1, description="memory those requests may hold (bodies, tensors, overlay copies)"
    )
    max_heatmap_side: int = Field(2048, ge=64, description="cap on the overlay PNG's longer side")
    preprocess_threads: int = Field(0, ge=0, description="decode/resize threads (0 = cores)")
    jpeg_draft: bool = Field(
        True,
        description="/classify: decode JPEGs at a reduced DCT scale that still covers the resize "
        "target (gateway CPU -13%, capacity +33% on ViT-S); false, and CROP_RESIZE=false: "
        "pixel-exact with timm",
    )
    crop_resize: bool = Field(
        True,
        description="/classify: resize only the region the centre crop keeps (resize CPU -32% on "
        "the bench's photos at 224 px; <= 0.3/255 mean from timm); false: all of it, as timm",
    )
    jpeg_to_triton: bool = Field(
        True,
        description="/classify: send JPEG uploads as bytes to Triton's DALI ensembles when the "
        "repository has them (make repo --preprocess dali); false: decode here as for any image",
    )
    alpha_background: tuple[int, int, int] = Field(
        (255, 255, 255), description="transparent pixels are composited on this RGB colour"
    )

    fast_path: bool = Field(
        True,
        description="POST /classify with a plain query (top_k, precision) answered without "
        "FastAPI's router: the same answers at ~0.75 core-ms less per request (service/"
        "fast_path.py); false: every request through the router",
    )
    access_log: bool = Field(
        True,
        description="one line per request on stdout: client, request line, status, duration, "
        "trace id (service/tracing.py)",
    )

    api_key: SecretStr | None = Field(
        None, description="if set, /classify and /explain need it (X-API-Key or Bearer)"
    )
    cors_origins: list[str] = Field(
        [], description='origins allowed by CORS, e.g. ["https://app.example"] (none: off)'
    )

    @field_validator("alpha_background")
    @classmethod
    def _rgb(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in value):
            raise ValueError("alpha_background must be three values 0-255")
        return value

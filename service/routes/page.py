"""GET / (the demo page, static files: no build step, nothing from another origin) and GET /info,
which tells the page (and anyone) what the gateway serves right now."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from service import names
from service.colormaps import COLORMAPS, DEFAULT_COLORMAP, hex_table
from service.deps import ServicesDep
from service.discard_ratio import supported
from service.encode import OUTPUT_MEDIA_TYPES
from service.errors import ServiceError
from service.schemas import ExplainModelInfo, Info

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# The page loads only its own files and talks only to this gateway; images it shows are uploads
# (blob:) and the API's answers (data:).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

router = APIRouter()


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


@router.get("/info", response_model=Info)
async def info(services: ServicesDep) -> Info:
    """The model, the precisions Triton serves now, and the choices /explain accepts."""
    settings, metadata = services.settings, services.metadata
    classify: list[str] = []
    explain: list[ExplainModelInfo] = []
    attribution: list[str] = []
    triton_error, version = None, None
    try:
        variants = await services.triton.variants(settings.readiness_timeout_s)
    except ServiceError as exc:  # the page still loads and says why nothing can be explained
        triton_error = exc.message
    else:
        default = variants.get((names.CLASSIFY_TASK, settings.default_precision))
        if default:  # what its served version says, not what the gateway started with
            metadata, version = services.contract(default), default.version or None
        for (task, precision), variant in sorted(variants.items()):
            if task == names.CLASSIFY_TASK:
                classify.append(precision)
            elif task == names.ATTRIBUTION_TASK:
                attribution.append(precision)
            else:
                explain.append(
                    ExplainModelInfo(
                        precision=precision, name=variant.name, discard_ratio=supported(variant)
                    )
                )
    return Info(
        architecture=metadata.model_name,
        input_size=(metadata.spec.height, metadata.spec.width),
        labels=len(metadata.labels),
        default_precision=settings.default_precision,
        version=version,
        classify=classify,
        explain=explain,
        attribution=attribution,
        triton_error=triton_error,
        head_fusions=list(names.HEAD_FUSIONS),
        outputs=list(OUTPUT_MEDIA_TYPES),
        colormaps={name: hex_table(name) for name in COLORMAPS},
        default_colormap=DEFAULT_COLORMAP,
        limits={
            "max_files": settings.max_files,
            "max_body_bytes": settings.max_body_bytes,
            "max_image_pixels": settings.max_image_pixels,
            "max_heatmap_side": settings.max_heatmap_side,
        },
    )

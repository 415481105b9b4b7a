"""Reading uploads from a request: multipart (one or several files) or a raw image body."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from service import tracing
from service.errors import BadRequest, ClientDisconnected, PayloadTooLarge, UnsupportedMediaType

RAW_MEDIA_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


async def read_uploads(request: Request, max_files: int) -> list[Upload]:
    """The whole body, read before the request takes an in-flight slot (service/limits.py bounds
    its size and time while it streams in)."""
    with tracing.span("upload") as span:
        try:
            uploads = await _read(request, max_files)
        except ClientDisconnect as exc:
            raise ClientDisconnected("the client closed the connection during the upload") from exc
        if span is not None:
            span.set_attributes(
                {"vit.images": len(uploads), "vit.upload_bytes": sum(len(u.data) for u in uploads)}
            )
        return uploads


async def _read(request: Request, max_files: int) -> list[Upload]:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return await _multipart(request, max_files)
    if media_type.startswith(RAW_MEDIA_TYPES):
        return [Upload(None, await request.body())]
    raise UnsupportedMediaType(
        f"unsupported Content-Type {media_type or '(none)'!r}: send multipart/form-data with "
        "one or more files, or the image itself with an image/* Content-Type"
    )


async def _multipart(request: Request, max_files: int) -> list[Upload]:
    try:
        form = await request.form(max_files=max_files, max_fields=32)
    except HTTPException as exc:  # Starlette reports multipart problems as a bare 400
        if "Too many files" in str(exc.detail):
            raise PayloadTooLarge(f"too many files: at most {max_files} per request") from exc
        if "exceeded maximum size" in str(exc.detail):  # a non-file field over 1 MiB
            raise PayloadTooLarge(f"a form field is too large: {exc.detail}") from exc
        raise BadRequest(f"malformed multipart body: {exc.detail}") from exc
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise BadRequest("the multipart body has no file: send each image as a file field")
        return [Upload(f.filename, await f.read()) for f in files]
    finally:
        await form.close()

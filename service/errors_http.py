"""The one place where exceptions become HTTP answers: status, headers and envelope()'s JSON body
{"error": {"code", "message"}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service import tracing
from service.errors import ServiceError, envelope

log = logging.getLogger("service")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Every JSON error answer the gateway sends."""
    tracing.annotate({"vit.error.code": code})
    return JSONResponse(envelope(code, message), status_code=status, headers=headers)


def service_error_response(exc: ServiceError) -> JSONResponse:
    """A service error's answer: its status, its headers and Retry-After when it has one."""
    headers = dict(exc.headers)
    if exc.retry_after_s:
        headers["Retry-After"] = str(exc.retry_after_s)
    if exc.status >= 500 and exc.logged:
        log.warning("%s: %s", exc.code, exc.message)
    return error_response(exc.status, exc.code, exc.message, headers)


def http_error_response(exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (404, 405, ...) in the envelope."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return service_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
        return error_response(422, "invalid_parameter", "; ".join(parts))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return http_error_response(exc)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(
            500, "internal_error", "internal error; the gateway log has the details"
        )

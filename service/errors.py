"""The service's exceptions: one class per answer the API gives, each with its HTTP status.

Everything a client can get wrong, and everything Triton can answer, is mapped to one of these
(Triton errors in service/triton.py, upload problems in service/images.py and service/inputs.py);
service/errors_http.py turns them into answers whose body is envelope()'s JSON: {"error": {"code":
..., "message": ...}}, the one error body the API sends.
"""

from __future__ import annotations

from typing import ClassVar


def envelope(code: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON body of every error answer (schemas.ErrorResponse documents it)."""
    return {"error": {"code": code, "message": message}}


class ServiceError(Exception):
    status = 500
    code = "internal_error"
    headers: ClassVar[dict[str, str]] = {}  # sent with the answer (besides Retry-After)
    logged: ClassVar[bool] = True  # a 5xx answer is logged as a warning

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class Unauthorized(ServiceError):
    """API_KEY is set and the request did not carry it."""

    status, code = 401, "unauthorized"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="vit-gateway"'}


class RequestTimeout(ServiceError):
    """The body did not arrive within BODY_TIMEOUT_S (a slow or stalled upload)."""

    status, code = 408, "request_timeout"
    headers: ClassVar[dict[str, str]] = {
        "Connection": "close"
    }  # the rest of the body is never read


class ClientDisconnected(ServiceError):
    """The client went away before its request was read: nobody gets this answer, but metrics
    count it as 499 (nginx's convention), not as a server error."""

    status, code = 499, "client_closed_request"


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class CorruptImage(BadRequest):
    code = "corrupt_image"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class UnprocessableImage(ServiceError):
    """A valid image the model cannot use, refused from its header (e.g. a 1 x 40,000,000 strip)."""

    status, code = 422, "unprocessable_image"


class InvalidParameter(ServiceError):
    status, code = 422, "invalid_parameter"


class Overloaded(ServiceError):
    """More requests in flight than the gateway takes: refused at once, not queued."""

    status, code = 503, "overloaded"


class DeadlineExceeded(ServiceError):
    """The request's deadline passed while its images waited for the decode pool (busy)."""

    status, code = 503, "deadline_exceeded"


class NotReady(ServiceError):
    """/readyz: Triton or a default model is not ready (probes ask often: not logged)."""

    status, code = 503, "not_ready"
    logged = False


class TritonUnavailable(ServiceError):
    status, code = 503, "triton_unavailable"


class TritonQueueFull(ServiceError):
    status, code = 503, "triton_queue_full"


class TritonTimeout(ServiceError):
    status, code = 504, "triton_timeout"


class TritonFailed(ServiceError):
    """Triton answered with an error that is not the client's fault."""

    status, code = 502, "triton_error"


class NotAcceptable(ServiceError):
    """The Accept header excludes every representation the endpoint can send."""

    status, code = 406, "not_acceptable"

"""The service's exceptions: one class per answer the API gives, each with its HTTP status.

Everything a client can get wrong, and everything Triton can answer, is mapped to one of these
(Triton errors in service/triton.py, upload problems in service/images.py and service/inputs.py);
one handler in service/main.py turns them into JSON: {"error": {"code": ..., "message": ...}}.
"""

from __future__ import annotations


class ServiceError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class CorruptImage(BadRequest):
    code = "corrupt_image"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidParameter(ServiceError):
    status, code = 422, "invalid_parameter"


class Overloaded(ServiceError):
    """More requests in flight than the gateway takes: refused at once, not queued."""

    status, code = 503, "overloaded"


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

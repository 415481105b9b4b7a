"""POST /classify without FastAPI's router: the gateway's busiest request at less CPU per request.

FastAPI's routing, dependency solving, query validation and response-model check cost ~0.7
core-ms of the ~3 a /classify request costs the gateway on the JPEG bytes path (where nothing is
decoded here; docs/benchmarks.md). This layer sits inside every other middleware (tracing and the
access log, request metrics, CORS, the body-size and body-time limits apply as before) and takes
a /classify request only when its query and credentials mean plainly what the route would read:
`top_k` (1-1000, digits only) and `precision` (the route's pattern), each at most once, and the
API key, when one is set, right. It then runs the route's own body (routes/classify.answer) and
answers with the route's response model, serialised as FastAPI does; the service's errors get the
one mapping's answer (errors_http.service_error_response). Anything else goes to FastAPI before a
byte of the body is read, and gets the canonical answer: 422 for a bad value, 401 for a wrong
key, 405 for another method. FAST_PATH=false sends every request through FastAPI (the same
answers: tests/service/test_fast_path.py compares the two).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from fastapi.security.utils import get_authorization_scheme_param
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service import auth, errors_http
from service.deps import Admission, Services
from service.errors import ServiceError
from service.queries import PRECISION_PATTERN, TOP_K_DEFAULT, TOP_K_MAX, ClassifyQuery
from service.routes import classify

PATH = "/classify"
_TOP_K = re.compile(r"[1-9][0-9]{0,3}")  # what the route reads as the same int, nothing else
_PRECISION = re.compile(PRECISION_PATTERN.removeprefix("^").removesuffix("$"))


def plain_query(query_string: bytes) -> ClassifyQuery | None:
    """The route's query when it holds nothing but plain values of top_k and precision (the
    route's defaults for those absent); None: FastAPI decides."""
    top_k: int | None = None
    precision: str | None = None
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name == "top_k" and top_k is None and _TOP_K.fullmatch(value):
            top_k = int(value)
            if top_k > TOP_K_MAX:
                return None
        elif name == "precision" and precision is None and _PRECISION.fullmatch(value):
            precision = value
        else:  # another parameter, a repeat, or a value the route's checks must judge
            return None
    # values checked as the model would: no second validation
    return ClassifyQuery.model_construct(
        top_k=TOP_K_DEFAULT if top_k is None else top_k, precision=precision
    )


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of a header, as Starlette's Request.headers.get reads it."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def key_accepted(scope: Scope, expected: str) -> bool:
    """The API key the route's security dependency would accept (X-API-Key first, else a Bearer
    token); anything else goes to the route, which answers 401."""
    given = _header(scope, b"x-api-key") or None
    if given is None:
        scheme, credentials = get_authorization_scheme_param(_header(scope, b"authorization"))
        given = credentials if scheme.lower() == "bearer" and credentials else None
    return auth.matches(given, expected)


class FastClassify:
    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ours = (
            scope["type"] == "http"
            and scope["path"] == PATH
            and scope["method"] == "POST"
            # FastAPI's native telemetry (when on) names the request's span in its router
            and scope.get("fastapi.telemetry") is None
        )
        query = plain_query(scope["query_string"]) if ours else None
        if query is None or (self.api_key and not key_accepted(scope, self.api_key)):
            await self.app(scope, receive, send)
            return
        services: Services = scope["app"].state.services
        slot = Admission(services)
        # As with the route's dependency, the slot is held while an answer is sent and released
        # before an error is (release() is idempotent).
        try:
            try:
                answer = await classify.answer(Request(scope, receive), slot, query)
                # FastAPI's own serialisation of a response model (pydantic's JSON, by alias)
                body = answer.model_dump_json(by_alias=True)
                response = Response(body, media_type="application/json")
            except ServiceError as exc:
                slot.release()
                response = errors_http.service_error_response(exc)
            except HTTPException as exc:  # what the route's exception middleware would map
                slot.release()
                response = errors_http.http_error_response(exc)
            await response(scope, receive, send)
        finally:
            slot.release()

"""Optional API key (setting API_KEY; off by default) for /classify and /explain.

Sent as `X-API-Key: <key>` or `Authorization: Bearer <key>`; compared in constant time so the
answer's timing says nothing about how much of a guess was right. Declared with FastAPI's security
classes, so the OpenAPI page shows both schemes when the key is on.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Unauthorized

API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False)
BEARER = HTTPBearer(auto_error=False)


def matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def require_api_key(expected: str) -> Callable[..., Awaitable[None]]:
    async def check(
        key: Annotated[str | None, Security(API_KEY_HEADER)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    ) -> None:
        given = key if key is not None else (bearer.credentials if bearer else None)
        if not matches(given, expected):
            raise Unauthorized(
                "missing or wrong API key: send it as X-API-Key or Authorization: Bearer"
            )

    return check

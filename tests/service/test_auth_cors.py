"""Optional API key and CORS: both off by default, both from settings, against the real gateway."""

from __future__ import annotations

import asyncio
import hmac

import pytest

from service import auth
from tests.helpers import local_gateway, png_bytes

KEY = "s3cret-key"
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def guarded(triton, repository):
    with (
        local_gateway(
            triton.ports.grpc, repository, API_KEY=KEY, CORS_ORIGINS=f'["{ORIGIN}"]'
        ) as gateway,
        gateway.client() as client,
    ):
        yield client


@pytest.fixture(scope="module")
def image(heldout):
    return png_bytes(heldout.images[0])


def post(client, image, **headers):
    return client.post("/classify", content=image, headers={"Content-Type": "image/png", **headers})


def test_off_by_default(http, image):
    assert post(http, image).status_code == 200
    preflight = http.options(
        "/classify",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    simple = post(http, image, Origin=ORIGIN)
    assert "access-control-allow-origin" not in simple.headers
    assert "securitySchemes" not in http.get("/openapi.json").json().get("components", {})


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"X-API-Key": KEY[:-1]},
     {"Authorization": f"Basic {KEY}"}],
)  # fmt: skip
def test_a_missing_or_wrong_key_is_refused(guarded, image, headers):
    r = post(guarded, image, **headers)
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    explain = guarded.post("/explain", content=image, headers={"Content-Type": "image/png"})
    assert explain.status_code == 401


def test_the_key_opens_both_endpoints_and_probes_stay_open(guarded, image):
    assert post(guarded, image, **{"X-API-Key": KEY}).status_code == 200
    assert post(guarded, image, Authorization=f"Bearer {KEY}").status_code == 200
    r = guarded.post(
        "/explain", content=image, headers={"Content-Type": "image/png", "X-API-Key": KEY}
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    for path in ("/healthz", "/readyz", "/metrics"):
        assert guarded.get(path).status_code == 200, path
    schemes = guarded.get("/openapi.json").json()["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"apiKey", "http"}


def test_cors_allows_only_the_configured_origin(guarded, image):
    ok = guarded.options(
        "/classify",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-API-Key, Content-Type",
        },
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    other = guarded.options(
        "/classify",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in other.headers
    r = guarded.post(
        "/explain",
        content=image,
        headers={"Content-Type": "image/png", "X-API-Key": KEY, "Origin": ORIGIN},
    )
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "x-top-label" in r.headers["access-control-expose-headers"].lower()


def test_the_key_is_compared_in_constant_time(monkeypatch):
    """The comparison is hmac.compare_digest (timing-safe), on bytes so any header is comparable."""
    calls = []
    compare = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    check = auth.require_api_key(KEY)
    asyncio.run(check(key=KEY, bearer=None))
    with pytest.raises(auth.Unauthorized):
        asyncio.run(check(key="é-not-ascii", bearer=None))
    assert calls == [(KEY.encode(), KEY.encode()), ("é-not-ascii".encode(), KEY.encode())]

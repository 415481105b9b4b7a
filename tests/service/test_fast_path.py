"""POST /classify's fast path (service/fast_path.py): it takes only requests whose query and key
mean plainly what the route would read, and then answers exactly as the route does.

Each request below goes, over real HTTP to the real Triton, to a gateway with the fast path and to
one without (FAST_PATH=false); the answers must agree in status, headers that matter and body
(timings aside). A spy on the route's dependency tells which requests reached the router."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest
from PIL import Image
from starlette.requests import Request

from service.config import Settings
from service.fast_path import plain_query
from service.main import create_app
from service.queries import ClassifyQuery
from service.routes import common
from tests.helpers import encode, png_bytes, serve_app

KEY = "fast-key"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", (5, None)),
        (b"top_k=3", (3, None)),
        (b"precision=fp32&top_k=1000", (1000, "fp32")),
        (b"precision=int8", (5, "int8")),
    ],
)
def test_a_plain_query_is_read_as_the_route_reads_it(query, expected):
    read = plain_query(query)
    assert read is not None and (read.top_k, read.precision) == expected
    assert read == ClassifyQuery.model_validate({"top_k": expected[0], "precision": expected[1]})


@pytest.mark.parametrize(
    "query",
    [
        b"top_k=0", b"top_k=1001", b"top_k=05", b"top_k=%2B5", b"top_k=5.0", b"top_k=%205",
        b"top_k=", b"top_k=1&top_k=2", b"precision=FP32", b"precision=fp32%0A", b"precision=",
        b"precision=a&precision=b", b"top_k=3&other=1", b"alpha=0.5", b"top_k=99999999999999999",
    ],
)  # fmt: skip
def test_anything_else_is_left_to_the_route(query):
    assert plain_query(query) is None


@dataclass
class Pair:
    fast: httpx.Client
    routed: httpx.Client
    router_hits: list[str]  # the query of each request that reached the route's dependency


def _pair(triton, repository, **settings) -> Iterator[Pair]:
    """A gateway with the fast path and one without, in this process (the spy needs its app)."""
    hits: list[str] = []
    base = Settings(
        triton_url=f"127.0.0.1:{triton.ports.grpc}",
        model_metadata=repository / "model.json",
        access_log=False,
        **settings,
    )
    clients = []
    with ExitStack() as stack:
        for fast in (True, False):
            app = create_app(base.model_copy(update={"fast_path": fast}))
            if fast:

                async def spy(request: Request):  # the route's one dependency, counted
                    hits.append(request.url.query)
                    async for slot in common.inference_slot(request):
                        yield slot

                app.dependency_overrides[common.inference_slot] = spy
            url = stack.enter_context(serve_app(app))
            clients.append(stack.enter_context(httpx.Client(base_url=url, timeout=30)))
        yield Pair(*clients, hits)


@pytest.fixture(scope="module")
def pair(triton, repository):
    yield from _pair(triton, repository)


@pytest.fixture(scope="module")
def guarded(triton, repository):
    yield from _pair(triton, repository, api_key=KEY)


def _same_answer(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code, (a.text, b.text)
    for header in ("content-type", "retry-after", "www-authenticate", "connection"):
        assert a.headers.get(header) == b.headers.get(header), header
    assert "x-trace-id" in a.headers and "traceparent" in a.headers
    body_a, body_b = a.json(), b.json()
    if a.status_code == 200:
        assert body_a["timings_ms"].keys() == body_b["timings_ms"].keys()
        body_a.pop("timings_ms"), body_b.pop("timings_ms")
    assert body_a == body_b


@pytest.fixture(scope="module")
def images(heldout):
    rgb = Image.fromarray(heldout.images[0].transpose(1, 2, 0)).resize((96, 80))
    return {
        "png": png_bytes(heldout.images[0]),
        "jpeg": encode(rgb, "JPEG", quality=90),
        "corrupt": encode(rgb, "JPEG")[:200],
    }


def test_plain_requests_skip_the_router_and_get_the_routes_answers(pair, images):
    requests = [
        ("", "image/png", images["png"]),
        ("top_k=3", "image/jpeg", images["jpeg"]),
        ("precision=fp32&top_k=1000", "application/octet-stream", images["png"]),
        ("precision=nosuch", "image/png", images["png"]),  # 422 from the catalog, not the route
        ("", "image/jpeg", images["corrupt"]),  # 400 corrupt_image
        ("", "text/plain", b"hello"),  # 415
        ("", "image/png", b""),  # 400: an empty body
    ]
    for query, content_type, body in requests:
        answers = [
            client.post(f"/classify?{query}", content=body, headers={"Content-Type": content_type})
            for client in (pair.fast, pair.routed)
        ]
        _same_answer(*answers)
    multipart = [
        ("file", ("a.png", images["png"], "image/png")),
        ("file", ("b.jpg", images["jpeg"], "x")),
    ]
    _same_answer(*(c.post("/classify?top_k=2", files=multipart) for c in (pair.fast, pair.routed)))
    assert pair.router_hits == []


def test_other_requests_reach_the_router_and_get_its_answer(pair, images):
    queries = ["top_k=05", "top_k=0", "top_k=1001", "top_k=abc", "top_k=1&top_k=2", "alpha=1",
               "precision=FP32", "top_k=%205"]  # fmt: skip
    for query in queries:
        answers = [
            client.post(
                f"/classify?{query}", content=images["png"], headers={"Content-Type": "image/png"}
            )
            for client in (pair.fast, pair.routed)
        ]
        _same_answer(*answers)
    routed = [q for q in pair.router_hits if q]
    # the ones FastAPI's validation refuses never reach the dependency's body either way
    assert {"top_k=05", "top_k=1&top_k=2", "alpha=1"} <= set(routed)
    get = [c.get("/classify") for c in (pair.fast, pair.routed)]
    assert get[0].status_code == get[1].status_code == 405
    assert get[0].json() == get[1].json()


@pytest.mark.parametrize(
    ("headers", "fast"),
    [
        ({"X-API-Key": KEY}, True),
        ({"Authorization": f"Bearer {KEY}"}, True),
        ({"Authorization": f"bearer {KEY}"}, True),
        ({"X-API-Key": "", "Authorization": f"Bearer {KEY}"}, True),
        ({}, False),
        ({"X-API-Key": "wrong"}, False),
        ({"X-API-Key": "wrong", "Authorization": f"Bearer {KEY}"}, False),
        ({"Authorization": f"Basic {KEY}"}, False),
        ({"Authorization": "Bearer"}, False),
    ],
)
def test_the_key_is_accepted_exactly_where_the_route_accepts_it(guarded, images, headers, fast):
    guarded.router_hits.clear()
    answers = [
        client.post(
            "/classify", content=images["png"], headers={"Content-Type": "image/png", **headers}
        )
        for client in (guarded.fast, guarded.routed)
    ]
    _same_answer(*answers)
    assert answers[0].status_code == (200 if fast else 401)
    # a right key: the fast path answered (the route would have called its dependency); a wrong
    # one: the route's security dependency refused it before that dependency
    assert guarded.router_hits == []


@pytest.mark.parametrize("fast", [True, False])
def test_the_in_flight_slot_is_held_while_the_answer_is_sent(triton, repository, images, fast):
    """As the route's dependency holds it: a request being written still counts against
    MAX_IN_FLIGHT; a refused one (here a corrupt image) no longer does when its error is sent."""
    import asyncio

    settings = Settings(
        triton_url=f"127.0.0.1:{triton.ports.grpc}",
        model_metadata=repository / "model.json",
        access_log=False,
        fast_path=fast,
    )
    app = create_app(settings)

    async def post(body: bytes) -> list[tuple[int, int]]:
        seen: list[tuple[int, int]] = []  # (status, requests in flight) at each body message
        status = 0
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                seen.append((status, app.state.services.limiter.current))

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/classify", "raw_path": b"/classify", "root_path": "",
            "query_string": b"top_k=2", "headers": [(b"content-type", b"image/png")],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        }  # fmt: skip
        await app(scope, receive, send)
        return seen

    async def run() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        async with app.router.lifespan_context(app):
            return await post(images["png"]), await post(images["corrupt"])

    answered, refused = asyncio.run(run())
    assert answered == [(200, 1)]
    assert refused == [(400, 0)]

"""Slow and vanishing clients against the real gateway (uvicorn subprocess, real Triton): a
trickling upload holds no in-flight slot and is cut off with 408; a client that disconnects
mid-upload is counted as 499, not as a server error."""

from __future__ import annotations

import re
import socket
import time
from urllib.parse import urlsplit

import pytest

from local_triton.gateway import LocalGateway
from tests.helpers import local_gateway, png_bytes, start_gateway, stop_gateway

BODY_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def one_slot_gateway(triton, repository):
    with local_gateway(
        triton.ports.grpc, repository, MAX_IN_FLIGHT="1", BODY_TIMEOUT_S=str(BODY_TIMEOUT_S)
    ) as gateway:
        yield gateway


def open_upload(gateway: LocalGateway, declared: int, first: bytes) -> socket.socket:
    """Headers and the first bytes of a body, the rest never sent (yet)."""
    url = urlsplit(gateway.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=15)
    sock.sendall(
        b"POST /classify HTTP/1.1\r\nHost: gateway\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {declared}\r\n\r\n".encode()
        + first
    )
    return sock


def read_answer(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError("no answer: the stalled upload was never cut off") from None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def counted(gateway: LocalGateway, status: str) -> float:
    with gateway.client() as client:
        text = client.get("/metrics").text
    pattern = rf'gateway_requests_total\{{endpoint="classify",status="{status}"\}} (\S+)'
    found = re.search(pattern, text)
    return float(found[1]) if found else 0.0


def test_a_stalled_upload_holds_no_slot_and_gets_408(one_slot_gateway, heldout):
    image = png_bytes(heldout.images[0])
    stalled = open_upload(one_slot_gateway, len(image), image[:10])
    try:
        time.sleep(0.3)  # the gateway has the headers and waits for the body
        with one_slot_gateway.client() as client:  # MAX_IN_FLIGHT=1: the only slot is free
            r = client.post("/classify", content=image, headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        answer = read_answer(stalled)
    finally:
        stalled.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b'"code":"request_timeout"' in answer and b"BODY_TIMEOUT_S" in answer
    assert b"connection: close" in answer.lower()


def test_a_client_that_disconnects_mid_upload_is_not_a_server_error(one_slot_gateway):
    before_499, before_500 = counted(one_slot_gateway, "499"), counted(one_slot_gateway, "500")
    sock = open_upload(one_slot_gateway, 100_000, b"\x89PNG\r\n\x1a\n")
    time.sleep(0.2)
    sock.close()
    deadline = time.monotonic() + 5
    while counted(one_slot_gateway, "499") == before_499:
        assert time.monotonic() < deadline, "the disconnect was not counted as 499"
        time.sleep(0.1)
    assert counted(one_slot_gateway, "499") == before_499 + 1
    assert counted(one_slot_gateway, "500") == before_500


def test_a_request_past_its_deadline_stops_using_the_decode_pool(triton, repository):
    """16 expensive images, one decode thread, a 0.5 s deadline: once the deadline has passed the
    pool skips the rest of the request's images and answers 503 deadline_exceeded, instead of
    decoding all 16 (seconds of CPU) for an answer nobody can use."""
    from PIL import Image

    from tests.helpers import encode

    gateway = start_gateway(
        triton.ports.grpc,
        repository,
        PREPROCESS_THREADS="1",
        REQUEST_TIMEOUT_S="0.5",
        MAX_REQUEST_PIXELS=str(10**9),
    )
    heavy = encode(Image.new("P", (4000, 4000), 3), "PNG")  # a few KiB, 16 M pixels to decode
    files = [("file", (f"{i}.png", heavy, "image/png")) for i in range(16)]
    try:
        with gateway.client() as client:
            r = client.post("/classify", files=files)
    finally:
        stop_gateway(gateway)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "deadline_exceeded"
    assert r.headers["retry-after"] == "1"

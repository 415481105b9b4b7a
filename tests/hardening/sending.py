"""Sending corpus calls: through httpx, or byte by byte on a socket for what httpx will not send
(a lying Content-Length, a trickling body)."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from tests.hardening.corpus import Call

CLIENT_TIMEOUT_S = 60.0  # far past every time bound: a hang shows as a slow answer, not a stall


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_s: float
    response: httpx.Response | None  # None for raw socket calls

    def json(self) -> dict:
        import json

        return json.loads(self.body)


def send(url: str, call: Call) -> Answer:
    if call.raw is not None:
        return send_raw(url, call.raw)
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
        start = time.monotonic()
        r = client.post(
            call.path,
            params=call.params,
            headers=call.headers,
            content=call.content,
            files=call.files,
        )
        elapsed = time.monotonic() - start
    return Answer(r.status_code, dict(r.headers), r.content, elapsed, r)


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=CLIENT_TIMEOUT_S)


def _read_answer(sock: socket.socket, start: float) -> Answer:
    data = b""
    status_at = None
    while True:
        try:
            piece = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not piece:
            break
        if status_at is None:
            status_at = time.monotonic()
        data += piece
        if b"\r\n\r\n" in data:
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length:")), None,
            )  # fmt: skip
            if length is not None and len(body) >= length:
                break
    elapsed = (status_at or time.monotonic()) - start
    if not data:
        return Answer(0, {}, b"", elapsed, None)  # closed without an answer
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return Answer(int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body,
                  elapsed, None)  # fmt: skip


def send_raw(url: str, raw: bytes) -> Answer:
    with _connect(url) as sock:
        start = time.monotonic()
        sock.sendall(raw)
        return _read_answer(sock, start)


def slow_upload(url: str, total: int, byte_every_s: float, give_up_s: float) -> Answer:
    """Declares `total` bytes of PNG, then sends one byte every byte_every_s until the gateway
    answers (or give_up_s passes)."""
    head = (
        "POST /classify HTTP/1.1\r\nHost: gateway\r\nContent-Type: image/png\r\n"
        f"Content-Length: {total}\r\n\r\n"
    ).encode()
    with _connect(url) as sock:
        start = time.monotonic()
        sock.sendall(head)
        sock.settimeout(byte_every_s)
        sent = 0
        while sent < total and time.monotonic() - start < give_up_s:
            try:
                piece = sock.recv(65536, socket.MSG_PEEK)
                if piece or piece == b"":
                    break  # the gateway answered (or closed): stop trickling
            except TimeoutError:
                pass
            try:
                sock.sendall(b"\0")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
        sock.settimeout(2.0)  # answered by now, or it never will be
        return _read_answer(sock, start)

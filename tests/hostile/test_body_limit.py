"""Bodies over the limit are refused before being read whole, on the real HTTP server
(uvicorn, as `listsync web` runs it) for both routes that take a body."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn

from tests.helpers import wait_for
from tests.hostile.conftest import SECRET, TOKEN, WEBHOOK
from worker.cli.processes import free_port
from worker.web.signups import MAX_BODY_BYTES

CHUNK = 16 * 1024
UPLOAD = 64 * 1024 * 1024  # what the client would send if nobody stopped it
SOCKET_READ_MAX = 256 * 1024
ROUTES = [
    ("/v1/signups", f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json"),
    (WEBHOOK + SECRET, "Content-Type: application/x-www-form-urlencoded"),
]


@dataclass
class Server:
    port: int
    consumed: list[int] = field(default_factory=list)  # body bytes the app took, per request


@pytest.fixture
def server(app: Any) -> Iterator[Server]:
    """The app behind a real uvicorn on a free port, counting the body bytes it reads."""
    served = Server(free_port())

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        taken = 0

        async def counted() -> Any:
            nonlocal taken
            message = await receive()
            taken += len(message.get("body", b""))
            return message

        try:
            await app(scope, counted, send)
        finally:
            served.consumed.append(taken)

    config = uvicorn.Config(
        counting, host="127.0.0.1", port=served.port, log_config=None, lifespan="off"
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    wait_for(lambda: uv.started, timeout=15)
    yield served
    uv.should_exit = True
    thread.join(15)


def upload(port: int, path: str, headers: str, *, chunked: bool) -> tuple[bytes, int]:
    """Send a huge body until the server answers or hangs up; returns (answer, bytes sent)."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {UPLOAD}"
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n{framing}\r\n\r\n"
    piece = (b"%x\r\n" % CHUNK + b"x" * CHUNK + b"\r\n") if chunked else b"x" * CHUNK
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(head.encode())
        try:
            while sent < UPLOAD and not select.select([sock], [], [], 0)[0]:
                sock.sendall(piece)
                sent += CHUNK
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server hung up on the rest of the body: that is the point
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):  # the server closes after its answer
                answer += chunk
    return answer, sent


@pytest.mark.parametrize(("path", "headers"), ROUTES, ids=["signups", "webhook"])
def test_a_streamed_body_over_the_limit_is_refused_after_reading_about_64_kib(
    server: Server, path: str, headers: str
) -> None:
    answer, sent = upload(server.port, path, headers, chunked=True)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert sent < UPLOAD // 4  # answered, and hung up, long before the client was done
    [taken] = server.consumed
    # The app stops at the first message past the limit; one message holds what one socket
    # read brought (asyncio reads up to 256 KiB at a time, more of it on a loaded machine).
    assert MAX_BODY_BYTES < taken <= MAX_BODY_BYTES + SOCKET_READ_MAX


@pytest.mark.parametrize(("path", "headers"), ROUTES, ids=["signups", "webhook"])
def test_a_declared_length_over_the_limit_is_refused_before_any_byte_is_read(
    server: Server, path: str, headers: str
) -> None:
    answer, sent = upload(server.port, path, headers, chunked=False)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < UPLOAD // 4
    assert server.consumed == [0]


def test_the_access_log_of_the_real_server_never_shows_the_webhook_secret(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="uvicorn.access")
    answer = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        request = f"GET {WEBHOOK}{SECRET} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")
    access = wait_for(lambda: [r for r in caplog.records if r.name == "uvicorn.access"], 10)
    assert all(SECRET not in r.getMessage() for r in access)
    assert any(f"{WEBHOOK}***" in r.getMessage() for r in access)

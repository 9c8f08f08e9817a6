"""WebSocket close codes per RFC 6455 for a peer's protocol errors.

A text message that is not UTF-8 closes with 1007, a binary frame inside a
fragmented text message (and any other framing error) with 1002, never 1011
("internal error", which blames the server). Here: the front listener's media
socket (``engine.front``, direct mode of ``transports.asgi_ws``) with a handler
that reads until the peer is gone; the real host is checked in
``tests/test_reliability.py`` with the same frames.
"""

from __future__ import annotations

import base64
import os
import struct
from typing import Any

import pytest
import trio



def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One masked client frame, built by hand (a library would refuse to send these)."""
    mask = os.urandom(4)
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    header = struct.pack("!BB", first, 0x80 | n) if n < 126 else struct.pack("!BBH", first, 0x80 | 126, n)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


CASES = {
    "invalid_utf8": ([frame(1, b'{"event":"\xff\xfe"}')], 1007),
    "binary_inside_text": ([frame(1, b'{"ev', fin=False), frame(2, b"xx")], 1002),
    "continuation_without_start": ([frame(0, b"xx")], 1002),
    "reserved_opcode": ([frame(3, b"xx")], 1002),
}


async def close_code_after(port: int, frames: list[bytes], headers: str = "") -> int | None:
    """Upgrade, send ``frames``, and return the code of the server's close frame."""
    sock = await trio.open_tcp_stream("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    await sock.send_all(
        (
            f"GET /twilio/media HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
        ).encode()
    )
    data = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in data:
            data += await sock.receive_some(4096)
        assert data.startswith(b"HTTP/1.1 101"), data[:80]
        data = data.partition(b"\r\n\r\n")[2]
        for f in frames:
            await sock.send_all(f)
        while True:
            try:
                chunk = await sock.receive_some(4096)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            data += chunk
    await sock.aclose()
    i = 0
    while i + 2 <= len(data):  # server frames are not masked
        opcode, n, j = data[i] & 0x0F, data[i + 1] & 0x7F, i + 2
        if n == 126:
            n, j = struct.unpack("!H", data[j : j + 2])[0], j + 2
        if opcode == 8:
            return struct.unpack("!H", data[j : j + 2])[0] if n >= 2 else None
        i = j + n
    return None


async def _reader(sock: Any) -> None:
    """A media handler: accept, read until the peer is gone, close."""
    assert await sock.connect()
    await sock.accept()
    while await sock.receive() is not None:
        pass
    await sock.close()


@pytest.mark.parametrize("case", sorted(CASES))
async def test_front_media_socket_close_codes(case: str) -> None:
    import socket

    from engine.front import Front, Peers

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    front = Front(_reader, ("127.0.0.1", 9), Peers())  # nothing is relayed here
    frames, expected = CASES[case]
    async with trio.open_nursery() as nursery:
        await nursery.start(front.serve, listener)
        assert await close_code_after(listener.getsockname()[1], frames) == expected
        nursery.cancel_scope.cancel()

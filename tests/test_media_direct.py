"""Direct mode of the media socket behind the front listener (``engine.front``,
``MediaSocket.on_socket``): the front reads the upgrade request, and the socket
owns the TCP connection from then on, reading and writing it itself; every
other connection is relayed to a real hypercorn on a private port.

The front and hypercorn (``hypercorn.trio.serve``) run in this process; the
media handler is a small function of ``MediaSocket``; the client is a raw TCP
socket speaking RFC 6455 through wsproto, so the tests control exactly which
bytes arrive and when (a message split across reads, bytes sent with the
upgrade request, a ping, a close, garbage).
"""

from __future__ import annotations

import json
import socket
from typing import Any, Awaitable, Callable

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import Opcode

from engine.front import Front, Peers, RealClient
from transports.asgi_ws import MediaSocket

App = Callable[[MediaSocket], Awaitable[None]]


async def http_app(scope: Any, receive: Any, send: Any) -> None:
    """What hypercorn serves behind the front: lifespan, and for HTTP the
    client address it saw, as JSON."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = json.dumps({"client": list(scope["client"]), "path": scope["path"]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def start_server(nursery: trio.Nursery, handler: App, *, max_message: int = 1 << 20) -> int:
    """The front on a free port: ``/media`` upgrades to ``handler`` (one
    MediaSocket each), all else relayed to hypercorn. The public port."""
    peers = Peers()
    cfg = Config()
    cfg.bind = ["127.0.0.1:0"]
    cfg.accesslog = None
    cfg.errorlog = None
    binds = await nursery.start(lambda task_status: serve(RealClient(http_app, peers), cfg, task_status=task_status))
    upstream = int(binds[0].rsplit(":", 1)[1])
    front = Front(handler, ("127.0.0.1", upstream), peers, media_path="/media", max_message=max_message)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    await nursery.start(front.serve, listener)
    return listener.getsockname()[1]


async def open_direct(sock: MediaSocket) -> bool:
    """Take the upgrade and accept it (True: the socket owns the connection)."""
    assert await sock.connect()
    await sock.accept()
    return sock.direct


class Client:
    """A raw WebSocket client: wsproto over a trio socket."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Any] = []
        self.eof = False

    @classmethod
    async def connect(cls, port: int) -> "Client":
        s = trio.socket.socket()
        await s.connect(("127.0.0.1", port))
        c = cls(s)
        await c.raw(c.ws.send(Request(host=f"127.0.0.1:{port}", target="/media")))
        while not any(isinstance(e, AcceptConnection) for e in c.events):
            await c.read_some()
        return c

    async def raw(self, data: bytes) -> None:
        await self.sock.send(data)

    async def text(self, text: str) -> None:
        await self.raw(self.ws.send(TextMessage(data=text)))

    async def read_some(self) -> None:
        data = await self.sock.recv(65536)
        if not data:
            self.eof = True
            self.ws.receive_data(None)
        else:
            self.ws.receive_data(data)
        self.events.extend(self.ws.events())

    async def until(self, pred: Callable[[list[Any]], bool], timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while not pred(self.events):
                if self.eof:
                    raise AssertionError(f"EOF before the condition held; events: {self.events}")
                await self.read_some()

    async def until_eof(self, timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while not self.eof:
                try:
                    await self.read_some()
                except OSError:
                    self.eof = True

    def texts(self) -> list[str]:
        return [e.data for e in self.events if isinstance(e, TextMessage)]


def masked_frame(opcode: int, payload: bytes, *, fin: bool) -> bytes:
    """A client frame (masked with a zero key), possibly not final."""
    head = bytes(((0x80 if fin else 0) | opcode, 0x80 | len(payload)))  # payloads < 126 bytes here
    return head + b"\0\0\0\0" + payload


async def test_bytes_with_the_upgrade_and_a_message_split_across_reads_arrive_in_order() -> None:
    got: list[Any] = []
    result: dict[str, Any] = {}

    async def handler(sock: MediaSocket) -> None:
        result["direct"] = await open_direct(sock)
        result["path"] = sock.path_and_query
        result["client"] = sock.client_ip
        while (m := await sock.receive()) is not None:
            got.append(m[0])
            if m[0] == "bye":
                break
        assert sock.send_text_nowait("one")
        assert await sock.send_text("two")
        await sock.close()

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, handler)
        s = trio.socket.socket()
        await s.connect(("127.0.0.1", port))
        c = Client(s)
        # The upgrade request and the first message in one write: the front must
        # keep what followed the request head.
        await c.raw(c.ws.send(Request(host=f"127.0.0.1:{port}", target="/media?x=1")) + masked_frame(Opcode.TEXT, b"a", fin=True))
        await c.until(lambda ev: any(isinstance(e, AcceptConnection) for e in ev))
        await c.text("b")
        await c.raw(masked_frame(Opcode.TEXT, b"fir", fin=False))
        await trio.sleep(0.2)  # the socket has read the first fragment
        await c.raw(masked_frame(Opcode.CONTINUATION, b"st", fin=True))
        await c.text("c")
        await c.text("bye")
        await c.until(lambda ev: any(isinstance(e, CloseConnection) for e in ev))
        await c.until_eof()
        nursery.cancel_scope.cancel()
    assert result == {"direct": True, "path": "/media?x=1", "client": "127.0.0.1"}
    assert got == ["a", "b", "first", "c", "bye"]
    assert c.texts() == ["one", "two"]
    close = [e for e in c.events if isinstance(e, CloseConnection)]
    assert close[0].code == 1000


async def test_a_refusal_is_an_http_response_with_its_status() -> None:
    async def handler(sock: MediaSocket) -> None:
        assert await sock.connect()
        await sock.refuse(503, "too many calls", 1013)

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, handler)
        s = trio.socket.socket()
        await s.connect(("127.0.0.1", port))
        c = Client(s)
        await c.raw(c.ws.send(Request(host=f"127.0.0.1:{port}", target="/media")))
        await c.until_eof()
        nursery.cancel_scope.cancel()
    rejected = [e for e in c.events if isinstance(e, RejectConnection)]
    assert rejected and rejected[0].status_code == 503
    assert b"".join(e.data for e in c.events if isinstance(e, RejectData)) == b"too many calls"


async def test_other_connections_are_relayed_with_keep_alive_and_the_real_client_address() -> None:
    """Not the media path (or not an upgrade): hypercorn answers, two requests on
    one connection, and it sees the client's address, not the relay's."""

    async def handler(sock: MediaSocket) -> None:
        raise AssertionError("not a media upgrade")

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, handler)
        s = trio.socket.socket()
        await s.connect(("127.0.0.1", port))
        mine = s.getsockname()
        answers: list[dict[str, Any]] = []
        buf = b""
        for path in ("/media", "/other"):
            await s.send(f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n".encode())
            with trio.fail_after(5):
                while True:
                    head, sep, rest = buf.partition(b"\r\n\r\n")
                    if sep:
                        length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
                        if len(rest) >= length:
                            answers.append(json.loads(rest[:length]))
                            buf = rest[length:]
                            break
                    buf += await s.recv(65536)
        s.close()
        nursery.cancel_scope.cancel()
    assert [a["path"] for a in answers] == ["/media", "/other"]
    assert all(tuple(a["client"]) == tuple(mine) for a in answers)


async def test_a_ping_is_answered_and_a_peer_close_ends_receive_with_its_code() -> None:
    result: dict[str, Any] = {}

    async def handler(sock: MediaSocket) -> None:
        result["direct"] = await open_direct(sock)
        result["got"] = await sock.receive()
        result["after_close"] = await sock.receive()
        result["code"] = sock.close_code
        result["send_after"] = sock.send_text_nowait("late")
        await sock.close()

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, handler)
        c = await Client.connect(port)
        await trio.sleep(0.2)
        await c.raw(c.ws.send(Ping(payload=b"hi")))
        await c.until(lambda ev: any(isinstance(e, Pong) for e in ev))
        await c.text("x")
        await c.raw(c.ws.send(CloseConnection(code=4001, reason="done")))
        await c.until(lambda ev: any(isinstance(e, CloseConnection) for e in ev))
        await c.until_eof()
        nursery.cancel_scope.cancel()
    assert result["direct"] is True
    assert [e.payload for e in c.events if isinstance(e, Pong)] == [b"hi"]
    assert result["got"][0] == "x"
    assert result["after_close"] is None and result["code"] == 4001
    assert result["send_after"] is False
    # The echo of ours (wsproto adds a 1006 of its own when the TCP connection then ends).
    assert [e.code for e in c.events if isinstance(e, CloseConnection)][0] == 4001


async def test_an_oversized_message_is_refused_with_1009() -> None:
    result: dict[str, Any] = {}

    async def handler(sock: MediaSocket) -> None:
        result["direct"] = await open_direct(sock)
        result["got"] = await sock.receive()
        result["code"] = sock.close_code
        await sock.close()

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, handler, max_message=1000)
        c = await Client.connect(port)
        await trio.sleep(0.2)
        await c.text("y" * 5000)
        await c.until(lambda ev: any(isinstance(e, CloseConnection) for e in ev))
        await c.until_eof()
        nursery.cancel_scope.cancel()
    assert result == {"direct": True, "got": None, "code": 1009}
    assert [e.code for e in c.events if isinstance(e, CloseConnection)][0] == 1009


async def test_garbage_and_a_dropped_connection_end_receive_without_raising() -> None:
    results: list[Any] = []

    async def handler(sock: MediaSocket) -> None:
        await open_direct(sock)
        results.append(await sock.receive())
        results.append(sock.close_code)
        await sock.close()

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, handler)
        c = await Client.connect(port)
        await trio.sleep(0.2)
        await c.raw(b"\x8f\x80\0\0\0\0")  # reserved opcode 0xF: a protocol error
        await c.until_eof()
        c2 = await Client.connect(port)
        await trio.sleep(0.2)
        c2.sock.close()  # no close frame: the TCP connection just ends
        with trio.fail_after(5):
            while len(results) < 4:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert results[0] is None and results[1] is not None
    assert results[2] is None and results[3] == 1006


async def test_a_peer_that_stops_reading_is_cut_off_and_the_backlog_kept_in_order() -> None:
    """Writes the kernel does not take wait in the backlog, in order; a backlog
    older than the send timeout makes ``wait_send_stalled`` return, and closing
    then drops the connection (a partial frame cannot be followed by a close)."""
    result: dict[str, Any] = {}

    async def handler(sock: MediaSocket) -> None:
        sock.send_timeout = 0.5
        result["direct"] = await open_direct(sock)
        n = 0
        with trio.move_on_after(10) as scope:
            async with trio.open_nursery() as inner:

                async def watch() -> None:
                    await sock.wait_send_stalled()
                    result["stalled_after"] = n
                    inner.cancel_scope.cancel()

                inner.start_soon(watch)
                while sock.send_text_nowait(f"{n:06d}" + "x" * 2000):
                    n += 1
                    await trio.sleep(0)
        result["timed_out"] = scope.cancelled_caught
        await sock.close()
        result["done"] = True

    async with trio.open_nursery() as nursery:
        port = await start_server(nursery, handler)
        s = trio.socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await s.connect(("127.0.0.1", port))
        c = Client(s)
        await c.raw(c.ws.send(Request(host=f"127.0.0.1:{port}", target="/media")))
        await c.until(lambda ev: any(isinstance(e, AcceptConnection) for e in ev))
        with trio.fail_after(10):
            while "stalled_after" not in result:
                await trio.sleep(0.05)
        # Now read what arrived: whole messages, in order, then the connection ends.
        with trio.fail_after(10):
            while True:
                try:
                    data = await s.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                c.ws.receive_data(data)
                try:
                    c.events.extend(c.ws.events())
                except Exception:  # noqa: BLE001 - the cut frame at the end
                    break
        with trio.fail_after(5):
            while "done" not in result:  # the handler has finished
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert result["direct"] is True and result["timed_out"] is False
    numbers = [int(t[:6]) for t in c.texts() if len(t) == 2006]
    assert numbers == list(range(len(numbers))) and len(numbers) > 0
    assert not any(isinstance(e, CloseConnection) and e.code == 1000 for e in c.events)

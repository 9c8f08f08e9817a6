"""The public port's front listener: the media WebSocket here, all else to hypercorn.

Why: the media stream is the one path where every message counts (50 calls x
50 messages a second each way), and serving it through hypercorn's ASGI
layers cost most of the per-frame CPU. So the host's public port is served by
this listener, on public APIs only (trio sockets, h11 for the request head,
wsproto for the WebSocket), and hypercorn is bound to a private loopback port:

- A connection whose first request is ``GET <media_path>`` with
  ``Upgrade: websocket`` becomes a :class:`transports.asgi_ws.MediaSocket`
  that owns the TCP socket (no second owner: trio's socket object gives up
  its descriptor with ``detach``), handed to the host's media handler.
- Every other connection is relayed to hypercorn byte for byte, both ways,
  starting with the bytes already read: keep-alive, streaming responses
  (SSE), request bodies and other WebSockets behave as if the client were
  connected to hypercorn itself. Half-closes are passed on.

The client's address: hypercorn sees the relay's loopback connection, so the
front records which loopback source port carries which client
(:class:`Peers`), and :class:`RealClient` (ASGI middleware in front of the
app) puts the real address into ``scope["client"]``. Nothing the client sends
can forge it (no header is trusted), and keep-alive requests keep it.

A relay write to a client that stopped reading is bounded (``SEND_TIMEOUT_S``):
then both connections are closed, so hypercorn's own write to the relay fails
instead of blocking on a peer that never reads.
"""

from __future__ import annotations

import logging
import socket as _socket
from typing import Any, Awaitable, Callable, MutableMapping
from urllib.parse import unquote

import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request as WsRequest

from transports.asgi_ws import SEND_TIMEOUT_S, MediaSocket

__all__ = ["Front", "Peers", "RealClient", "HEAD_TIMEOUT_S"]

log = logging.getLogger("callengine.front")

#: How long a new connection may take to send its first request head.
HEAD_TIMEOUT_S = 30.0
_RECV = 65536

MediaHandler = Callable[[MediaSocket], Awaitable[None]]


class Peers:
    """Loopback source port of a relay connection -> the client's (host, port)."""

    __slots__ = ("by_port",)

    def __init__(self) -> None:
        self.by_port: dict[int, tuple[str, int]] = {}


class RealClient:
    """ASGI middleware: ``scope["client"]`` becomes the address of the client the
    front relays for (see :class:`Peers`); any other connection is left as is."""

    __slots__ = ("app", "peers")

    def __init__(self, app: Any, peers: Peers) -> None:
        self.app = app
        self.peers = peers

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        client = scope.get("client")
        if client and scope.get("type") != "lifespan":
            real = self.peers.by_port.get(client[1])
            if real is not None and client[0] in ("127.0.0.1", "::1"):
                scope = dict(scope, client=real)
        await self.app(scope, receive, send)


def _is_media_upgrade(request: h11.Request, media_path: bytes) -> bool:
    if request.method != b"GET" or request.target.split(b"?", 1)[0] != media_path:
        return False
    for name, value in request.headers:
        if name == b"upgrade" and value.lower() == b"websocket":
            return True
    return False


class Front:
    """Serves one public listening socket (see the module docstring).

    ``media`` is the host's handler for one media socket (it owns it from the
    call until it returns; the front releases it after). ``upstream`` is
    hypercorn's private ``(host, port)``. ``max_message`` bounds one media
    message (larger closes with 1009)."""

    def __init__(
        self,
        media: MediaHandler,
        upstream: tuple[str, int],
        peers: Peers,
        *,
        media_path: str = "/twilio/media",
        max_message: int = 1 << 20,
    ) -> None:
        self.media = media
        self.upstream = upstream
        self.peers = peers
        self.media_path = media_path.encode("ascii")
        self.max_message = max_message

    async def serve(self, sock: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Accept on ``sock`` (a listening stdlib or trio socket) until cancelled."""
        if not isinstance(sock, trio.socket.SocketType):
            sock = trio.socket.from_stdlib_socket(sock)
        await trio.serve_listeners(self.connection, [trio.SocketListener(sock)], task_status=task_status)

    async def connection(self, stream: trio.SocketStream) -> None:
        """One client connection, from its first byte to its end; never raises."""
        try:
            head = b""
            request: h11.Request | None = None
            parser = h11.Connection(h11.SERVER)
            with trio.move_on_after(HEAD_TIMEOUT_S) as waited:
                while request is None:
                    data = await stream.receive_some(_RECV)
                    if not data:
                        break
                    head += data
                    parser.receive_data(data)
                    try:
                        event = parser.next_event()
                    except h11.RemoteProtocolError:
                        break  # hypercorn answers it
                    if isinstance(event, h11.Request):
                        request = event
                    elif event is not h11.NEED_DATA:
                        break
            if waited.cancelled_caught or not head:
                await stream.aclose()
                return
            if request is not None and _is_media_upgrade(request, self.media_path):
                await self._media(stream, head, request, parser.trailing_data[0])
            else:
                await self._relay(stream, head)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
        except Exception:  # noqa: BLE001 - one connection must never stop the listener
            log.warning("front connection failed", exc_info=True)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _media(self, stream: trio.SocketStream, head: bytes, request: h11.Request, early: bytes) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(head)
        if not any(isinstance(ev, WsRequest) for ev in ws.events()):
            # Not a valid upgrade after all (a missing key or version): hypercorn answers it.
            await self._relay(stream, head)
            return
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        peer = stream.socket.getpeername()
        scope = {
            "type": "websocket",
            "path": unquote(path),
            "raw_path": path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "headers": list(request.headers),
            "client": (str(peer[0]), int(peer[1])),
            "extensions": {"websocket.http.response": {}},
        }
        sock = _socket.socket(fileno=stream.socket.detach())  # the media socket is its one owner now
        sock.setblocking(False)
        media = MediaSocket.on_socket(scope, sock, ws, max_message=self.max_message, early=early)
        try:
            await self.media(media)
        finally:
            media.release()

    async def _relay(self, client: trio.SocketStream, head: bytes) -> None:
        try:
            upstream = await trio.open_tcp_stream(*self.upstream)
        except OSError:
            log.warning("hypercorn unreachable", extra={"upstream": f"{self.upstream[0]}:{self.upstream[1]}"})
            await client.send_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await client.aclose()
            return
        port = upstream.socket.getsockname()[1]
        peer = client.socket.getpeername()
        self.peers.by_port[port] = (str(peer[0]), int(peer[1]))
        for s in (client, upstream):
            s.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, True)
        try:
            await upstream.send_all(head)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope, False)
                nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope, True)
        finally:
            self.peers.by_port.pop(port, None)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(upstream)
                await trio.aclose_forcefully(client)

    @staticmethod
    async def _pump(
        src: trio.SocketStream, dst: trio.SocketStream, both: trio.CancelScope, to_client: bool
    ) -> None:
        """Copy ``src`` to ``dst`` until EOF (then half-close ``dst``). A write to
        the client that takes over ``SEND_TIMEOUT_S``, or any failure, ends both."""
        try:
            while True:
                data = await src.receive_some(_RECV)
                if not data:
                    if to_client:
                        both.cancel()  # hypercorn closed: the connection is over
                    else:
                        await dst.send_eof()
                    return
                if to_client:
                    with trio.move_on_after(SEND_TIMEOUT_S) as bound:
                        await dst.send_all(data)
                    if bound.cancelled_caught:
                        both.cancel()
                        return
                else:
                    await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            both.cancel()

"""One ASGI WebSocket, bare: the media stream's socket without a framework.

Why this exists: through Quart, every media message took five hops on
the trio thread: hypercorn's queue -> Quart's receiver task -> Quart's queue ->
the host's reader task -> a channel -> the transport; and as many back. Each hop
is a task switch plus wrapper code, and at 50 calls they were a large share of
the trio thread. Here the transport actor calls the ASGI ``receive`` and
``send`` callables of the server (hypercorn) itself, through one small object:
no task, no channel, no queue of ours in between.

Two pieces:

- :class:`MediaRoute`, ASGI middleware installed in front of the Quart app
  (``app.asgi_app = MediaRoute(app.asgi_app, path, handler)``, the way Quart
  documents wrapping ``asgi_app``): a WebSocket for ``path`` goes to
  ``handler``; everything else (HTTP, lifespan, other paths) goes to Quart.
- :class:`MediaSocket`, the ASGI WebSocket protocol for one connection:
  ``websocket.connect`` / ``accept`` / ``receive`` / ``send`` / ``disconnect`` /
  ``close``, and refusals through hypercorn's ``websocket.http.response``
  extension when the server offers it.

Direct mode: a socket made by :meth:`MediaSocket.on_socket` owns its TCP
connection outright. The public port's front listener (``engine.front``) reads
the upgrade request itself and hands the connected socket over, so no server
task, protocol layer, queue or lock lies between the peer and the transport:
one task waits on the file descriptor per read, and a send is a non-blocking
write. wsproto frames the WebSocket (its ``Connection``, a public API); that
I/O is :class:`transports.ws_direct.DirectIO`, the base of :class:`MediaSocket`.

Ownership: the host's handler owns the socket (it accepts or refuses it and
closes it at the end); the call's transport actor only reads and writes through
the object while the call tree lives. All methods run on the trio thread; the
object is not thread-safe and need not be. One task reads at a time and one
task writes at a time (ASGI allows a reader and a writer concurrently).

Bounded sends: a peer that stops reading makes the server's write block once
the kernel's buffers are full. Rather than a cancel scope around every send
(``trio.move_on_after`` measured 11 us per call on this box, about as much as
the whole hop it replaces), :meth:`MediaSocket.send_text` stamps when a send
begins and :meth:`MediaSocket.wait_send_stalled` sleeps until one send has been
in progress for a given time; the transport runs it beside its loops and ends
the call when it returns. In direct mode the stalled connection is reset at
once; over ASGI, how soon a stalled write returns is up to the server.
"""

from __future__ import annotations

import socket as _socket
from time import monotonic as _monotonic
from typing import Any, Awaitable, Callable, MutableMapping

import trio
from wsproto import WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData

from transports.ws_direct import DirectIO
from transports.ws_protocol import (
    CLOSE_ABNORMAL,
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
    SEND_TIMEOUT_S,
    SocketState,
    text_frame,
)

# The socket's vocabulary (``transports.ws_protocol``) is part of this module's
# documented API: the host refuses and closes calls with these names.
__all__ = [
    "MediaRoute",
    "MediaSocket",
    "SEND_TIMEOUT_S",
    "SocketState",
    "text_frame",
    "CLOSE_NORMAL",
    "CLOSE_GOING_AWAY",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_TRY_AGAIN_LATER",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _no_receive() -> Message:
    return {"type": "websocket.disconnect", "code": CLOSE_ABNORMAL}


async def _no_send(message: Message) -> None:
    return None


def _data(msg: Message) -> str | bytes:
    """The payload of an ASGI ``websocket.receive``: ``str`` for text, else ``bytes``."""
    text = msg.get("text")
    return text if text is not None else (msg.get("bytes") or b"")


class MediaRoute:
    """ASGI middleware: WebSockets on ``path`` go to ``handler``, all else to ``app``.

    ``handler(scope, receive, send)`` is a plain ASGI application for one
    WebSocket. Lifespan, HTTP and every other path reach ``app`` untouched.
    """

    __slots__ = ("app", "path", "handler")

    def __init__(self, app: ASGIApp, path: str, handler: Handler) -> None:
        self.app = app
        self.path = path
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope.get("path") == self.path:
            await self.handler(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class MediaSocket(DirectIO):
    """One ASGI WebSocket connection (see the module docstring).

    Guarantees:

    - :meth:`receive` returns ``(data, t)`` per message (``data`` is ``str`` for
      a text message, ``bytes`` for a binary one; ``t`` is ``time.monotonic()``
      when it was read) and ``None`` once the peer disconnected, then ``None``
      on every later call; it never raises for anything the peer sends.
    - :meth:`send_text` returns ``True`` once the server took the message and
      ``False``, without sending, when the socket is not open (closed by us, by
      the peer, or after a failed send). It never raises for a gone peer.
    - :meth:`close` and the refusals are idempotent and never raise for a
      gone peer; each is bounded by ``send_timeout``.

    Direct mode (:meth:`on_socket`): the socket owns a TCP connection whose
    upgrade request was read already, with the same guarantees: one task waits
    on the file descriptor per read (no server task, queue or hop), and a send
    is a synchronous non-blocking write (:meth:`send_text_nowait`), so a sender
    on the trio thread need not even switch tasks. What the kernel does not take
    at once waits in a backlog, written in order before anything newer; it is
    flushed by whoever awaits (:meth:`send_text`, :meth:`wait_send_stalled`)
    and by the next write. Messages are limited to ``max_message`` bytes (a
    larger one closes with 1009), a ping is answered, and a peer's bytes that
    wsproto cannot parse fail the connection with the RFC 6455 code it names
    (1002, 1007). :meth:`release` closes the connection (:meth:`close` frames
    a close first); a backlog still unwritten then means a partial frame and a
    peer that does not read, and the connection is reset instead.
    """

    __slots__ = ("scope", "_receive", "_send", "_send_since", "_owned", "_early")

    def __init__(self, scope: Scope, receive: Receive, send: Send, *, send_timeout: float = SEND_TIMEOUT_S) -> None:
        super().__init__(send_timeout)
        self.scope = scope
        self._receive = receive
        self._send = send
        self._send_since: float | None = None  # trio time at which the send in progress began
        self._owned = False  # direct mode: this object owns the TCP connection
        self._early = b""  # bytes the peer sent after its upgrade request, before the accept

    # ---- the request -------------------------------------------------------------------

    def header(self, name: bytes, default: str = "") -> str:
        """The first request header called ``name`` (lower-case bytes), latin-1 decoded."""
        for key, value in self.scope.get("headers") or ():
            if key.lower() == name:
                return value.decode("latin-1")
        return default

    @property
    def client_ip(self) -> str:
        """The peer's address as the server saw it ("" when unknown)."""
        client = self.scope.get("client")
        return str(client[0]) if client else ""

    @property
    def path_and_query(self) -> str:
        """``/path`` or ``/path?query`` as the client sent it (for signatures)."""
        path = self.scope.get("path") or "/"
        query = self.scope.get("query_string") or b""
        return f"{path}?{query.decode('utf-8', 'replace')}" if query else path

    # ---- handshake (the owner) -----------------------------------------------------------

    async def connect(self) -> bool:
        """Take the ``websocket.connect`` event. False if the peer left first."""
        if self._owned:
            return self.state is SocketState.CONNECTING and self._sock is not None
        while self.state is SocketState.CONNECTING:
            msg = await self._receive()
            kind = msg.get("type")
            if kind == "websocket.connect":
                return True
            if kind == "websocket.disconnect":
                self._peer_gone(msg)
                return False
        return self.state is SocketState.OPEN

    async def accept(self) -> None:
        if self.state is SocketState.CONNECTING:
            self.state = SocketState.OPEN
            if self._owned:
                self._write(self._ws.send(AcceptConnection()))
                self._ws = self._ws.connection  # the handshake is over: frame directly
                early, self._early = self._early, b""
                if early:
                    self._feed(early, _monotonic())  # what the peer sent right after its request
                return
            await self._send({"type": "websocket.accept"})

    @classmethod
    def on_socket(
        cls, scope: Scope, sock: _socket.socket, ws: WSConnection, *, max_message: int,
        early: bytes = b"", send_timeout: float = SEND_TIMEOUT_S,
    ) -> "MediaSocket":
        """Direct mode: a socket that owns ``sock`` (connected, non-blocking) and
        ``ws`` (a server ``WSConnection`` that has read the upgrade request);
        ``early`` holds the bytes that followed the request. ``scope`` describes it as
        ASGI would (``path``, ``query_string``, ``headers``, ``client``). The
        owner answers it with :meth:`accept` or :meth:`refuse` and ends it with
        :meth:`release`, which closes ``sock``."""
        self = cls(scope, _no_receive, _no_send, send_timeout=send_timeout)
        self._owned = True
        self._sock = sock
        self._fd = sock.fileno()
        self._ws = ws
        self._max_message = max_message
        self._early = early
        return self

    @property
    def direct(self) -> bool:
        """True while this object owns an open connection (direct mode)."""
        return self._sock is not None

    async def refuse(self, status: int, body: str, close_code: int) -> None:
        """Refuse the upgrade: an HTTP ``status`` response with ``body`` where the
        server supports ``websocket.http.response``, else a close with ``close_code``."""
        if self.state is not SocketState.CONNECTING:
            return
        self.state = SocketState.REFUSED
        payload = body.encode("utf-8")
        if self._owned:
            headers = [(b"content-type", b"text/plain; charset=utf-8")]
            try:
                self._write(self._ws.send(RejectConnection(status_code=status, headers=headers, has_body=True)))
                self._write(self._ws.send(RejectData(data=payload)))
            except Exception:  # wsproto refused (never expected): the connection is dropped
                pass
            with trio.move_on_after(self.send_timeout):
                await self._drain()
            self.release()
            return
        with trio.move_on_after(self.send_timeout):
            try:
                if "websocket.http.response" in (self.scope.get("extensions") or {}):
                    headers = [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(payload)).encode("ascii")),
                    ]
                    await self._send({"type": "websocket.http.response.start", "status": status, "headers": headers})
                    await self._send({"type": "websocket.http.response.body", "body": payload, "more_body": False})
                else:
                    await self._send({"type": "websocket.close", "code": close_code})
            except OSError:
                pass  # the peer is gone (servers that raise for it)

    def detach(self) -> None:
        """From now on :meth:`receive` returns ``None`` and :meth:`send_text`
        ``False`` without touching the server; only :meth:`close` still acts.
        The owner calls it when it must leave while a user may remain."""
        if self.state is SocketState.OPEN:
            self.state = SocketState.DETACHED

    async def close(self, code: int = CLOSE_NORMAL) -> None:
        """Close an open socket with ``code``; nothing if it is closed already.
        In direct mode the backlog is flushed first (within ``send_timeout``),
        the close frame written, the peer's close awaited (``CLOSE_WAIT_S``) so
        that the frame is not lost to a reset, and the connection closed."""
        if self._owned:
            await self._close_owned(code)
            return
        if self.state is not SocketState.OPEN and self.state is not SocketState.DETACHED:
            return
        self.state = SocketState.CLOSED
        with trio.move_on_after(self.send_timeout):
            try:
                await self._send({"type": "websocket.close", "code": code})
            except OSError:
                pass

    # ---- messages (the transport while the tree lives, else the owner) -------------------

    async def receive(self) -> tuple[str | bytes, float] | None:
        """The next message and its read time, or ``None`` once the peer left."""
        if self.state is SocketState.DETACHED:
            return None
        if self._sock is not None or self._pending:
            return await self._receive_direct()
        if self.close_code is not None:
            return None
        receive = self._receive
        while True:
            try:
                msg = await receive()
            except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError):
                msg = {"type": "websocket.disconnect", "code": 1006}  # the server dropped the connection
            kind = msg.get("type")
            if kind == "websocket.receive":
                return _data(msg), _monotonic()
            if kind == "websocket.disconnect":
                self._peer_gone(msg)
                return None
            # anything else (a stray websocket.connect) carries no message

    async def send_text(self, text: str) -> bool:
        """Send one text message; see the class guarantees. Not bounded itself:
        :meth:`wait_send_stalled` tells when a send takes too long."""
        if self.state is not SocketState.OPEN:
            return False
        if self._sock is not None:
            self._write(text_frame(text.encode("utf-8")))
            if self._backlog:
                self._send_since = self._backlog_since
                try:
                    await self._drain()
                finally:
                    self._send_since = None
            return self.state is SocketState.OPEN
        self._send_since = trio.current_time()
        try:
            await self._send({"type": "websocket.send", "text": text})
        except OSError:  # servers that raise for a gone peer (hypercorn returns)
            self.state = SocketState.CLOSED
            return False
        finally:
            self._send_since = None
        return True

    async def wait_send_stalled(self, timeout: float | None = None) -> None:
        """Return once a single send has been in progress ``timeout`` seconds
        (default ``send_timeout``); in direct mode, once the backlog has waited
        that long (meanwhile this task flushes it), having reset the connection
        (the peer is not reading; nothing more can reach it). Sleeps while sends
        complete: one wakeup per ``timeout`` when idle, none per message."""
        limit = self.send_timeout if timeout is None else timeout
        while True:
            if self._sock is not None:
                if not self._backlog:
                    self._backlog_wake = wake = trio.Event()
                    with trio.move_on_after(limit):
                        await wake.wait()
                    self._backlog_wake = None
                    continue
                with trio.move_on_at(self._backlog_since + limit):
                    await self._drain()
                if self._backlog and self._sock is not None and self.close_code is None:
                    # A stalled peer: reset the connection at once (release with a
                    # backlog resets it).
                    self.release()
                    self.close_code = CLOSE_ABNORMAL
                    return
                continue
            since = self._send_since
            now = trio.current_time()
            if since is None:
                await trio.sleep(limit)
            elif now - since >= limit:
                return
            else:
                await trio.sleep(since + limit - now)

    @property
    def open(self) -> bool:
        return self.state is SocketState.OPEN

    def _peer_gone(self, msg: Message) -> None:
        code = msg.get("code")
        self.close_code = code if isinstance(code, int) else CLOSE_NORMAL
        if self.state is not SocketState.REFUSED:
            self.state = SocketState.CLOSED

"""One ASGI WebSocket, bare: the media stream's socket without a framework.

Why this exists (issue 6): through Quart, every media message took five hops on
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
the call when it returns. Caveat, stated where it matters: hypercorn 0.18
performs the socket write itself inside a *shielded* cancel scope
(``hypercorn.trio.tcp_server.TCPServer.protocol_send``), which no cancellation
from the application interrupts; a write stalled in the kernel returns only
when the peer reads, resets or closes, unless that write is bounded on
hypercorn's side.
"""

from __future__ import annotations

import enum
from time import monotonic as _monotonic
from typing import Any, Awaitable, Callable, MutableMapping

import trio

__all__ = ["MediaRoute", "MediaSocket", "SEND_TIMEOUT_S", "SocketState"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

#: How long one outbound message may take before the peer counts as gone. The
#: kernel buffers well over 100 kB per socket and outbound media is ~12.5 kB/s,
#: so a write that blocks at all means the peer is seconds behind already.
SEND_TIMEOUT_S = 5.0

#: RFC 6455 close codes used on refusal when the server offers no HTTP response.
CLOSE_NORMAL = 1000
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013


class SocketState(enum.Enum):
    """CONNECTING -> OPEN [-> DETACHED] -> CLOSED; or CONNECTING -> REFUSED."""

    CONNECTING = "connecting"  # websocket.connect not yet answered
    OPEN = "open"  # accepted; messages flow
    DETACHED = "detached"  # open, but only the owner may still close it
    CLOSED = "closed"  # we closed, the peer disconnected, or a send failed
    REFUSED = "refused"  # answered with an HTTP response or a close before accept


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


class MediaSocket:
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
    """

    __slots__ = ("scope", "_receive", "_send", "send_timeout", "state", "close_code", "_send_since")

    def __init__(self, scope: Scope, receive: Receive, send: Send, *, send_timeout: float = SEND_TIMEOUT_S) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.send_timeout = send_timeout
        self.state = SocketState.CONNECTING
        self.close_code: int | None = None  # the peer's close code, once it disconnected
        self._send_since: float | None = None  # trio time at which the send in progress began

    # ---- the request -------------------------------------------------------------------

    def header(self, name: bytes, default: str = "") -> str:
        """The first request header called ``name`` (lower-case bytes), latin-1 decoded."""
        for key, value in self.scope.get("headers") or ():
            if key.lower() == name:
                return value.decode("latin-1")
        return default

    @property
    def path_and_query(self) -> str:
        """``/path`` or ``/path?query`` as the client sent it (for signatures)."""
        path = self.scope.get("path") or "/"
        query = self.scope.get("query_string") or b""
        return f"{path}?{query.decode('utf-8', 'replace')}" if query else path

    # ---- handshake (the owner) -----------------------------------------------------------

    async def connect(self) -> bool:
        """Take the ``websocket.connect`` event. False if the peer left first."""
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
            await self._send({"type": "websocket.accept"})

    async def refuse(self, status: int, body: str, close_code: int) -> None:
        """Refuse the upgrade: an HTTP ``status`` response with ``body`` where the
        server supports ``websocket.http.response``, else a close with ``close_code``."""
        if self.state is not SocketState.CONNECTING:
            return
        self.state = SocketState.REFUSED
        payload = body.encode("utf-8")
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
        """Close an open socket with ``code``; nothing if it is closed already."""
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
        if self.close_code is not None or self.state is SocketState.DETACHED:
            return None
        receive = self._receive
        while True:
            try:
                msg = await receive()
            except (trio.EndOfChannel, trio.ClosedResourceError, trio.BrokenResourceError):
                msg = {"type": "websocket.disconnect", "code": 1006}  # the server dropped the connection
            kind = msg.get("type")
            if kind == "websocket.receive":
                text = msg.get("text")
                return (text if text is not None else (msg.get("bytes") or b"")), _monotonic()
            if kind == "websocket.disconnect":
                self._peer_gone(msg)
                return None
            # anything else (a stray websocket.connect) carries no message

    async def send_text(self, text: str) -> bool:
        """Send one text message; see the class guarantees. Not bounded itself:
        :meth:`wait_send_stalled` tells when a send takes too long."""
        if self.state is not SocketState.OPEN:
            return False
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
        (default ``send_timeout``). Sleeps while sends complete: one wakeup per
        ``timeout`` when idle, none per message."""
        limit = self.send_timeout if timeout is None else timeout
        while True:
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


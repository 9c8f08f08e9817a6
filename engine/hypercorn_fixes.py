"""Work-arounds for two known hypercorn/quart-trio pitfalls (DESIGN.md).

1. With quart-trio on hypercorn, a request sent with ``Connection: close`` gets
   its response but the socket is never closed: the app's nursery cancellation
   reaches hypercorn's unshielded ``TCPServer._close`` and aborts it before
   ``aclose()``. The fix runs that close inside a shielded ``trio.CancelScope``
   (bounded, so a dead peer cannot hold it forever). Applied by ``apply()``,
   which the host calls at import, so every worker process gets it.
2. ``hypercorn.trio.serve`` does not handle signals; ``engine.cli`` passes a
   ``shutdown_trigger`` that waits on SIGTERM/SIGINT.
3. An exception inside one connection's ``TCPServer.run`` propagates into the
   server's handler nursery and stops the whole server: one malformed client
   (e.g. a binary WebSocket frame interleaved with a fragmented text message,
   which makes hypercorn's ``ws_stream`` raise ``TypeError``) would end every
   call in the process. Each connection's ``run`` is wrapped so such a failure
   closes that connection only, and is logged once.
4. ``TCPServer.protocol_send`` writes each chunk inside a *shielded* cancel
   scope with no bound: once a peer stops reading and the kernel's buffers are
   full, the write blocks for as long as the peer keeps the connection open,
   and no timeout of the application can interrupt it. A call whose caller
   stops reading would then never end (its transport is the task blocked in
   the write). The write is bounded by ``WRITE_TIMEOUT_S``; when it expires the
   connection is closed as if the peer had reset it (the application sees
   ``websocket.disconnect``; later sends return at once).

5. Borrowing a WebSocket's connection (:func:`borrow_websocket`). Through
   hypercorn every media message costs its read task, its protocol layers, an
   app queue and a task switch, and every send its lock and a shielded write:
   most of the per-frame CPU at 50 calls (issue 6). An application may borrow an
   accepted WebSocket's TCP socket and its wsproto connection, read and write
   them itself, and give them back; hypercorn's read loop parks meanwhile (its
   ``_read_data`` is replaced by an equivalent loop that can park, and that no
   longer opens a ``fail_after(inf)`` scope per read when ``read_timeout`` is
   unset). Refused (``None``) for TLS streams, HTTP/2, ping-enabled configs
   and anything unexpected, so the caller falls back to plain ASGI.

6. Close codes (RFC 6455 7.1.7, 7.4.1). When wsproto cannot parse a peer's
   bytes it reports a ``CloseConnection`` with the right code (1007 invalid
   UTF-8 in a text message, 1002 a protocol error such as a binary frame
   inside a fragmented text message) while the connection is still open;
   hypercorn's ``WSStream`` then ends the stream without a close frame, and
   the app's end makes it send 1011 (internal error), blaming the server for
   the peer's fault. ``WSStream._handle_events`` is replaced by the same loop
   that, for such a close, sends the close frame with wsproto's code first.
   (Direct mode does the same in ``transports.asgi_ws``.)

7. Drain before shutdown in worker processes: ``trio_worker`` turns the
   runner's shutdown event into its ``shutdown_trigger`` by looking up
   ``check_multiprocess_shutdown_event`` when it starts (after loading the
   app, hence after this patch); the patched one runs ``engine.drain`` first,
   so a worker keeps serving while its calls drain (one worker:
   ``engine.cli`` passes ``engine.drain.shutdown_trigger`` itself).

All are tested in ``tests/test_host.py``, ``tests/test_asgi_ws.py`` and
``tests/test_reliability.py``.
"""

from __future__ import annotations

import contextvars
import logging
import math
import socket as _socket_mod
import struct
from typing import Any, Callable

import trio

_applied = False

#: The hypercorn connection (``TCPServer``) whose task runs the current ASGI app.
#: Set by the patched ``TCPServer.run``; the app's task inherits it.
_connection: contextvars.ContextVar[Any] = contextvars.ContextVar("callengine_hypercorn_connection", default=None)


class _Takeover:
    """One borrowing, between :func:`borrow_websocket` and hypercorn's read loop."""

    __slots__ = ("granted", "released", "failed", "broken")

    def __init__(self) -> None:
        self.granted = trio.Event()  # the read loop is parked (or ended: ``failed``)
        self.released = trio.Event()  # the borrower gave the connection back
        self.failed = False
        self.broken = False  # the borrower left the byte stream unusable (a partial frame)


class BorrowedWebSocket:
    """An accepted WebSocket's connection, lent by hypercorn (see fix 5).

    While borrowed, the borrower alone reads and writes ``fd`` (a connected,
    non-blocking TCP socket; hypercorn's read loop is parked and nothing else of
    hypercorn writes), frames through ``ws`` (the connection's own wsproto
    ``Connection``, so its close state stays right), and continues a message
    hypercorn had begun in ``fragment`` (hypercorn's ``WebsocketBuffer``, which
    also enforces ``max_message``). ``early`` holds the ASGI messages hypercorn
    had queued for the app before the loan, in order. :meth:`give_back` returns
    everything to hypercorn; with ``broken=True`` (a partial frame was written)
    hypercorn closes the connection instead of reading on.
    """

    __slots__ = ("fd", "ws", "fragment", "max_message", "early", "_takeover", "_socket")

    def __init__(
        self, socket: Any, ws: Any, fragment: Any, max_message: int, early: list[Any], takeover: _Takeover
    ) -> None:
        self._socket = socket  # hypercorn's trio socket (its stream's)
        self.fd = socket.fileno()
        self.ws = ws
        self.fragment = fragment
        self.max_message = max_message
        self.early = early
        self._takeover = takeover

    def give_back(self, *, broken: bool = False) -> None:
        """Idempotent; never blocks."""
        if not self._takeover.released.is_set():
            self._takeover.broken = broken
            self._takeover.released.set()

    def abort(self) -> None:
        """Cut the connection now (a reset, as fix 4 does for a stalled write) and
        give it back broken: hypercorn then ends the connection without writing to
        it. For a peer that stopped reading, or a stream cut mid-frame. Idempotent;
        never blocks. The borrower must stop using ``fd`` first."""
        if self._takeover.released.is_set():
            return
        try:
            self._socket.setsockopt(_socket_mod.SOL_SOCKET, _socket_mod.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self._socket.close()  # trio's close: wakes any waiter on fd, then closes it
        self.give_back(broken=True)


async def borrow_websocket(receive: Callable[[], Any]) -> BorrowedWebSocket | None:
    """Borrow the current ASGI app's accepted WebSocket from hypercorn.

    ``receive`` is the app's ASGI receive callable: messages hypercorn queued for
    the app before the loan are drained from it into ``early``. Returns ``None``
    (nothing changed) where borrowing is not possible; the app then keeps using
    ASGI. Must be called after ``websocket.accept`` from the app's own task.
    """
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream

    server = _connection.get()
    if server is None or getattr(server, "_cx_done", True):
        return None
    channel = getattr(receive, "__self__", None)
    if not isinstance(channel, trio.MemoryReceiveChannel):
        return None
    protocol = getattr(getattr(server, "protocol", None), "protocol", None)
    stream = getattr(protocol, "stream", None)
    if not isinstance(protocol, H11Protocol) or not isinstance(stream, WSStream):
        return None
    if stream.state is not ASGIWebsocketState.CONNECTED or server.config.websocket_ping_interval is not None:
        return None
    sock = getattr(server.stream, "socket", None)  # absent on an SSLStream
    if sock is None or server._cx_takeover is not None:
        return None
    takeover = _Takeover()
    server._cx_takeover = takeover
    scope = server._cx_read_scope
    if scope is not None:
        scope.cancel()
    early: list[Any] = []
    # The read loop parks at its next turn; it may first have to hand the app
    # messages it already read, so keep receiving until it is parked.
    async with trio.open_nursery() as nursery:

        async def granted() -> None:
            await takeover.granted.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(granted)
        try:
            while True:
                early.append(await channel.receive())
        except (trio.EndOfChannel, trio.ClosedResourceError):
            await trio.sleep_forever()  # nothing more can come; wait for the grant
    while True:
        try:
            early.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            break
    if takeover.failed:
        server._cx_takeover = None
        return None
    return BorrowedWebSocket(
        sock, stream.connection, stream.buffer, server.config.websocket_max_message_size, early, takeover
    )

#: Longest one chunk's socket write may take (4.). A peer that takes longer to
#: accept a few kB is not reading; real-time media cannot wait that long anyway.
WRITE_TIMEOUT_S = 5.0


def apply() -> None:
    global _applied
    if _applied:
        return
    from hypercorn.trio import tcp_server

    original = tcp_server.TCPServer._close

    async def _close_shielded(self: tcp_server.TCPServer) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(5):
                await original(self)

    tcp_server.TCPServer._close = _close_shielded  # type: ignore[method-assign]

    original_run = tcp_server.TCPServer.run

    async def _run_isolated(self: tcp_server.TCPServer) -> None:
        _connection.set(self)  # the app's tasks, spawned from this one, inherit it (5.)
        try:
            await original_run(self)
        except Exception:  # noqa: BLE001 - one connection must never stop the server
            logging.getLogger("callengine.host").warning("connection failed", exc_info=True)
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    try:
                        await self.stream.aclose()
                    except Exception:  # noqa: BLE001
                        pass

    tcp_server.TCPServer.run = _run_isolated  # type: ignore[method-assign]

    from hypercorn.events import Closed, RawData

    original_send = tcp_server.TCPServer.protocol_send

    async def _protocol_send_bounded(self: tcp_server.TCPServer, event: object) -> None:
        if not isinstance(event, RawData):
            await original_send(self, event)
            return
        async with self.send_lock:
            try:
                # One scope, as before, now with a deadline (a nested move_on_after
                # would cost a second scope per message).
                with trio.CancelScope(shield=True, deadline=trio.current_time() + WRITE_TIMEOUT_S) as bound:
                    await self.stream.send_all(event.data)
                if bound.cancelled_caught:
                    # A cancelled send_all leaves the stream unusable: close it,
                    # which also ends the connection's read loop.
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(self.stream)
                    raise trio.BrokenResourceError("peer stopped reading")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())

    tcp_server.TCPServer.protocol_send = _protocol_send_bounded  # type: ignore[method-assign]

    from hypercorn.events import RawData as _RawData

    async def _read_data_lendable(self: tcp_server.TCPServer) -> None:
        # hypercorn 0.18's loop (read, hand to the protocol, stop on EOF, error or
        # read_timeout), plus: park while the connection is lent (5.).
        try:
            while True:
                takeover = self._cx_takeover
                if takeover is not None:
                    takeover.granted.set()
                    await takeover.released.wait()
                    self._cx_takeover = None
                    if takeover.broken:
                        break
                timeout = self.config.read_timeout
                with trio.CancelScope(deadline=trio.current_time() + timeout if timeout else math.inf) as scope:
                    self._cx_read_scope = scope
                    try:
                        data = await self.stream.receive_some(tcp_server.MAX_RECV)
                    except (trio.ClosedResourceError, trio.BrokenResourceError):
                        break
                    finally:
                        self._cx_read_scope = None
                if scope.cancelled_caught:
                    if self._cx_takeover is not None:
                        continue  # cancelled to lend the connection
                    break  # read_timeout
                await self.protocol.handle(_RawData(bytes(data)))
                if data == b"":
                    break
        finally:
            self._cx_done = True
            takeover = self._cx_takeover
            if takeover is not None and not takeover.granted.is_set():
                takeover.failed = True
                takeover.granted.set()
        await self.protocol.handle(Closed())

    from hypercorn.protocol import ws_stream as _ws
    from wsproto.connection import ConnectionState as _WsState
    from wsproto.events import CloseConnection as _Close
    from wsproto.events import Message as _Message
    from wsproto.events import Ping as _Ping

    async def _handle_events_failing(self: _ws.WSStream) -> None:
        # hypercorn 0.18's loop, plus: a close wsproto made up for a parse
        # failure (state still OPEN) is sent to the peer with its code (6.).
        for event in self.connection.events():
            if isinstance(event, _Message):
                try:
                    self.buffer.extend(event)
                except _ws.FrameTooLargeError:
                    await self._send_wsproto_event(_Close(code=_ws.CloseReason.MESSAGE_TOO_BIG))
                    break
                if event.message_finished:
                    await self.app_put(self.buffer.to_message())
                    self.buffer.clear()
            elif isinstance(event, _Ping):
                await self._send_wsproto_event(event.response())
            elif isinstance(event, _Close):
                if self.connection.state == _WsState.REMOTE_CLOSING:
                    await self._send_wsproto_event(event.response())
                elif self.connection.state == _WsState.OPEN:
                    await self._send_wsproto_event(_Close(code=event.code, reason=(event.reason or "")[:120]))
                await self.send(_ws.StreamClosed(stream_id=self.stream_id))

    _ws.WSStream._handle_events = _handle_events_failing  # type: ignore[method-assign]

    from hypercorn.trio import run as _trio_run

    original_check = _trio_run.check_multiprocess_shutdown_event

    async def _check_then_drain(event: Any, sleep: Any) -> None:
        # A worker of the multi-process runner: the runner's shutdown event (or
        # a signal sent to this worker) starts the drain; hypercorn stops
        # serving only after it (7.).
        from functools import partial

        from engine import drain

        app = drain.current_app()
        if app is None:
            await original_check(event, sleep)
            return
        await drain.shutdown_trigger(app, partial(original_check, event, sleep))()

    _trio_run.check_multiprocess_shutdown_event = _check_then_drain

    tcp_server.TCPServer._cx_takeover = None  # type: ignore[attr-defined]
    tcp_server.TCPServer._cx_read_scope = None  # type: ignore[attr-defined]
    tcp_server.TCPServer._cx_done = False  # type: ignore[attr-defined]
    tcp_server.TCPServer._read_data = _read_data_lendable  # type: ignore[method-assign]
    _applied = True

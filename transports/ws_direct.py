"""A WebSocket on a TCP connection this object owns: wsproto in, non-blocking writes out.

The media socket's direct mode (see ``transports.asgi_ws``) runs on this base.
Reading: one task waits on the file descriptor, one non-blocking ``recv`` is fed
to wsproto, and complete messages queue in order with the time they were read;
a ping is answered, the close handshake answered, a message over
``_max_message`` bytes refused with 1009, and bytes wsproto cannot parse fail
the connection with the RFC 6455 code it names. Writing: a write is a
synchronous non-blocking ``send``; what the kernel does not take waits in a
backlog that is written, in order, before anything newer, so frames never
interleave. :meth:`DirectIO.release` closes the connection, and resets it when
a backlog is left (a partial frame, a peer that does not read), so a stalled
peer never holds the call. All of it runs on the trio thread; no lock is needed.
"""

from __future__ import annotations

import socket as _socket
import struct
from collections import deque
from time import monotonic as _monotonic
from typing import Any

import trio
from wsproto.connection import ConnectionState as _WsState
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from transports.ws_protocol import (
    CLOSE_ABNORMAL,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NORMAL,
    CLOSE_WAIT_S,
    SocketState,
    text_frame,
)

__all__ = ["DirectIO"]

_RECV_BYTES = 65536


class DirectIO:
    """The connection state of a media socket, and its I/O when it owns the TCP
    connection (``_sock`` set); see the module docstring for the guarantees."""

    __slots__ = (
        "send_timeout",
        "state",
        "close_code",
        "_max_message",
        "_frag",
        "_frag_size",
        "_sock",
        "_fd",
        "_ws",
        "_pending",
        "_backlog",
        "_backlog_since",
        "_backlog_wake",
        "_flushing",
        "_flushed",
    )

    def __init__(self, send_timeout: float) -> None:
        self.send_timeout = send_timeout
        self.state = SocketState.CONNECTING
        self.close_code: int | None = None  # the peer's close code, once it disconnected
        self._max_message = 0
        self._frag: list[str | bytes] = []  # a fragmented message being assembled
        self._frag_size = 0
        self._sock: _socket.socket | None = None
        self._fd = -1
        self._ws: Any = None
        self._pending: deque[tuple[str | bytes, float]] = deque()
        self._backlog: deque[memoryview] = deque()
        self._backlog_since = 0.0  # trio time at which the backlog began
        self._backlog_wake: trio.Event | None = None
        self._flushing = False
        self._flushed: trio.Event | None = None

    def release(self) -> None:
        """Direct mode: close the connection now; idempotent, never blocks. A
        backlog still unwritten (a partial frame, a peer that does not read)
        resets it instead. Nothing over ASGI, where the server owns it."""
        sock = self._sock
        if sock is None:
            return
        broken = bool(self._backlog)
        self._backlog.clear()
        self._sock = None
        if broken:
            try:
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        trio.lowlevel.notify_closing(sock)  # wakes a reader or flusher waiting on it
        sock.close()
        if self.state is SocketState.OPEN:
            self.state = SocketState.CLOSED
        if self.close_code is None:
            self.close_code = CLOSE_ABNORMAL


    async def _close_owned(self, code: int) -> None:
        if self._sock is None:
            return
        if self._backlog and self.state is not SocketState.CLOSED:
            # What a send may take in all, counted from when the backlog began:
            # a peer that stalled the call's sends gets no more time here.
            with trio.move_on_at(self._backlog_since + self.send_timeout):
                await self._drain()
            if self._backlog:
                self.release()  # reset: the peer is not reading
                return
        if self.state is SocketState.OPEN or self.state is SocketState.DETACHED:
            self.state = SocketState.CLOSED
            if self.close_code is None:
                self._write_event(CloseConnection(code=code))
                with trio.move_on_after(CLOSE_WAIT_S):
                    await self._drain()
                    while self.close_code is None and self._sock is not None and not self._backlog:
                        try:
                            await trio.lowlevel.wait_readable(self._fd)
                        except (trio.ClosedResourceError, trio.BusyResourceError):
                            break
                        if not self._read_once():
                            break
        self.release()

    async def _receive_direct(self) -> tuple[str | bytes, float] | None:
        pending = self._pending
        while True:
            if pending:
                return pending.popleft()
            if self.close_code is not None or self._sock is None or self.state is SocketState.DETACHED:
                return None
            try:
                await trio.lowlevel.wait_readable(self._fd)
            except trio.ClosedResourceError:  # released under us
                self._gone(CLOSE_ABNORMAL)
                continue
            self._read_once()

    def _read_once(self) -> bool:
        """One non-blocking read fed to wsproto; False once the peer is gone."""
        sock = self._sock
        if sock is None:
            return False  # released while waiting
        try:
            data = sock.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if not data:
            self._gone(CLOSE_ABNORMAL)
            return False
        self._feed(data, _monotonic())
        return self.close_code is None

    def _feed(self, data: bytes, t: float) -> None:
        """Bytes from the peer -> complete messages in ``_pending``; pings answered,
        the close handshake answered, oversized messages refused (1009)."""
        self._ws.receive_data(data)
        self._events(t)

    def _events(self, t: float) -> None:
        ws = self._ws
        frag = self._frag
        pending = self._pending
        for ev in ws.events():
            if isinstance(ev, (TextMessage, BytesMessage)):
                if not frag and ev.message_finished and len(ev.data) <= self._max_message:
                    pending.append((ev.data, t))
                    continue
                frag.append(ev.data)
                self._frag_size += len(ev.data)
                if self._frag_size > self._max_message:
                    frag.clear()
                    self._frag_size = 0
                    self._write_event(CloseConnection(code=CLOSE_MESSAGE_TOO_BIG))
                    self._gone(CLOSE_MESSAGE_TOO_BIG)
                    return
                if ev.message_finished:
                    joined = "".join(frag) if isinstance(ev, TextMessage) else b"".join(frag)  # type: ignore[arg-type]
                    pending.append((joined, t))
                    frag.clear()
                    self._frag_size = 0
            elif isinstance(ev, Ping):
                self._write_event(ev.response())
            elif isinstance(ev, CloseConnection):
                if ws.state is _WsState.REMOTE_CLOSING:
                    self._write_event(ev.response())
                elif ws.state is _WsState.OPEN:
                    # Not the peer's close: wsproto could not parse its bytes and
                    # names the RFC 6455 code (1007 invalid UTF-8 in a text
                    # message, 1002 a protocol error such as a binary frame inside
                    # a fragmented text message). Fail the connection with it.
                    self._write_event(CloseConnection(code=ev.code, reason=(ev.reason or "")[:120]))
                self._gone(ev.code if isinstance(ev.code, int) else CLOSE_NORMAL)
                return

    def _write_event(self, event: Any) -> None:
        try:
            data = self._ws.send(event)
        except Exception:  # wsproto's LocalProtocolError: the close handshake is past that
            return
        self._write(data)

    def _gone(self, code: int) -> None:
        self.close_code = code
        if self.state is SocketState.OPEN:
            self.state = SocketState.CLOSED

    def send_text_nowait(self, text: str) -> bool:
        """Direct mode only: write one text message now, without waiting (what the
        kernel does not take waits in the backlog). False, without sending, when
        the socket is not open or not in direct mode."""
        if self.state is not SocketState.OPEN or self._sock is None:
            return False
        self._write(text_frame(text.encode("utf-8")))
        return self.state is SocketState.OPEN

    def _write(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            return
        backlog = self._backlog
        if backlog:
            backlog.append(memoryview(data))
            self._flush_nowait()
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._gone(CLOSE_ABNORMAL)
            return
        if sent < len(data):
            backlog.append(memoryview(data)[sent:])
            self._backlog_since = trio.current_time()
            wake = self._backlog_wake
            if wake is not None:
                wake.set()

    def _flush_nowait(self) -> None:
        sock = self._sock
        backlog = self._backlog
        while backlog and sock is not None:
            head = backlog[0]
            try:
                sent = sock.send(head)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                backlog.clear()
                self._gone(CLOSE_ABNORMAL)
                return
            if sent < len(head):
                backlog[0] = head[sent:]
                return
            backlog.popleft()

    async def _drain(self) -> None:
        """Wait until the backlog is written (or the socket is gone). One task
        waits for writability at a time; others wait for it."""
        while self._backlog and self._sock is not None and self.close_code is None:
            if self._flushing:
                flushed = self._flushed
                if flushed is None:
                    flushed = self._flushed = trio.Event()
                await flushed.wait()
                continue
            self._flushing = True
            try:
                await trio.lowlevel.wait_writable(self._fd)
            except trio.ClosedResourceError:  # the server closed it under us
                self._backlog.clear()
                self._gone(CLOSE_ABNORMAL)
            finally:
                self._flushing = False
                flushed, self._flushed = self._flushed, None
                if flushed is not None:
                    flushed.set()
            self._flush_nowait()

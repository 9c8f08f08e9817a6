"""The simulated caller's client WebSocket (RFC 6455) over a plain socket or TLS.

:class:`ClientWebSocket` does the HTTP/1.1 upgrade and parsing with ``wsproto``
and writes masked client text frames itself (:func:`masked_text_frame`); it runs
over a :class:`Conn`: :class:`SocketConn` (a non-blocking stdlib socket, the load
tester's ``ws://`` path: a send is one system call) or :class:`StreamConn` (a
``trio`` stream, used for ``wss://``). All of it runs on the caller's trio thread;
see :mod:`callsim.caller` for why the hot path is shaped this way.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import struct

from urllib.parse import urlsplit

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

__all__ = ["Conn", "SocketConn", "StreamConn", "ClientWebSocket", "ConnectError", "masked_text_frame", "DISCONNECT_TIMEOUT_S"]

log = logging.getLogger(__name__)

_MAX_MESSAGE_BYTES = 1024 * 1024  # larger engine messages end the call (close code 1009)
DISCONNECT_TIMEOUT_S = 2.0  # how long our close handshake waits for the server's Close
_RECV_BYTES = 16 * 1024


class Conn:
    """A byte pipe under one :class:`ClientWebSocket` (plain socket or TLS stream).

    ``write`` never blocks and never raises: what cannot go out now waits in
    order in ``_backlog`` behind earlier bytes, for the flusher task
    (``flush_forever``), which sleeps until there is some; a dead connection
    sets ``broken`` (later writes are dropped). ``receive_some`` returns ``b""``
    at end of stream or on a reset. One task reads; ``drain`` runs in one task
    at a time.
    """

    __slots__ = ("_backlog", "_wake", "broken")

    def __init__(self) -> None:
        self._backlog = bytearray()
        self._wake: trio.Event | None = None
        self.broken = False

    def _queue(self, data: bytes) -> None:
        self._backlog += data
        if self._wake is not None:
            self._wake.set()

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    async def drain(self) -> None:
        raise NotImplementedError

    async def receive_some(self) -> bytes:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def flush_forever(self) -> None:
        """The flusher task: asleep until a write left bytes in the backlog."""
        while not self.broken:
            if not self._backlog:
                self._wake = trio.Event()
                await self._wake.wait()
                self._wake = None
            await self.drain()


class SocketConn(Conn):
    """A plain TCP connection on a non-blocking stdlib socket, waited on with
    ``trio.lowlevel.wait_readable``/``wait_writable`` (the load tester's path).

    Why not ``trio.SocketStream``: every ``send_all`` and ``receive_some`` ends in a
    checkpoint (an extra scheduling round per message), and ``recv`` is tried
    before waiting (a failed system call per message). Here a write is one
    ``send``; a read is one wake-up and one ``recv``.
    """

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        sock.setblocking(False)
        self._sock = sock

    @classmethod
    async def connect(cls, host: str, port: int) -> "SocketConn":
        stream = await trio.open_tcp_stream(host, port)  # happy eyeballs; sets TCP_NODELAY
        return cls(socket.socket(fileno=stream.socket.detach()))

    def write(self, data: bytes) -> None:
        if self.broken:
            return
        if not self._backlog:
            try:
                sent = self._sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.broken = True
                return
            if sent == len(data):
                return
            data = data[sent:]
        self._queue(data)

    async def drain(self) -> None:
        """Write the backlog as the socket accepts it (returns at once when empty)."""
        while self._backlog and not self.broken:
            await trio.lowlevel.wait_writable(self._sock)
            try:
                sent = self._sock.send(self._backlog)
            except BlockingIOError:
                continue
            except OSError:
                self.broken = True
                return
            del self._backlog[:sent]

    async def receive_some(self) -> bytes:
        while True:
            await trio.lowlevel.wait_readable(self._sock)
            try:
                return self._sock.recv(_RECV_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                return b""

    async def aclose(self) -> None:
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
        self.broken = True


class StreamConn(Conn):
    """Any trio stream (TLS for ``wss://``); writes are queued and sent by the flusher."""

    __slots__ = ("_stream",)

    def __init__(self, stream: trio.abc.Stream) -> None:
        super().__init__()
        self._stream = stream

    @classmethod
    async def connect(cls, host: str, port: int) -> "StreamConn":
        stream = await trio.open_ssl_over_tcp_stream(
            host, port, ssl_context=ssl.create_default_context(), https_compatible=True
        )
        return cls(stream)

    def write(self, data: bytes) -> None:
        if not self.broken:
            self._queue(data)

    async def drain(self) -> None:
        """Send the backlog. Each ``send_all`` is shielded (bounded by
        ``DISCONNECT_TIMEOUT_S``): a cancelled ``send_all`` may have sent part of
        its bytes, and a message cut in half would corrupt the stream."""
        while self._backlog and not self.broken:
            data = bytes(self._backlog)
            self._backlog.clear()
            with trio.CancelScope(shield=True) as scope:
                scope.relative_deadline = DISCONNECT_TIMEOUT_S
                try:
                    await self._stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.broken = True
            if scope.cancelled_caught:
                self.broken = True

    async def receive_some(self) -> bytes:
        try:
            return bytes(await self._stream.receive_some(_RECV_BYTES))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def aclose(self) -> None:
        self.broken = True
        await trio.aclose_forcefully(self._stream)


def masked_text_frame(text: str) -> bytes:
    """One unfragmented client text frame (RFC 6455 section 5.2): FIN + text opcode,
    the MASK bit and length, a fresh 4-byte masking key from ``os.urandom`` (the
    RFC asks for a strong source of entropy), the payload XOR-ed with the key.

    Why not ``wsproto``'s ``send``: it builds the same bytes in 2.5x the time (a
    ``bytearray`` copy per step and a per-byte table masker); this is the hottest
    path of the load tester (one call per 20 ms tick per call). ``wsproto`` still
    does the handshake, every control frame and all parsing. A whole unfragmented
    data frame leaves ``wsproto``'s send state as it was.
    """
    payload = text.encode("utf-8")
    n = len(payload)
    if n < 126:
        header = bytes((0x81, 0x80 | n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 0xFE, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0xFF, n)
    key = os.urandom(4)
    mask = int.from_bytes((key * ((n + 3) >> 2))[:n], "little")
    return header + key + (int.from_bytes(payload, "little") ^ mask).to_bytes(n, "little")


class ConnectError(Exception):
    """The connection or the upgrade failed; the message is the caller's error text."""


class ClientWebSocket:
    """The client end of one RFC 6455 WebSocket over a :class:`Conn`. ``wsproto``
    does the upgrade, the control frames (ping, close) and all parsing (UTF-8
    checks, fragments, close codes); text messages out are :func:`masked_text_frame`.

    Runs on the caller's trio thread. ``send_text`` is synchronous (see
    :class:`Conn`). ``receive`` is called by one task at a time (the receiver,
    then the close handshake); it answers pings and the server's Close itself.
    Owned by ``SimulatedCaller.run()``, which calls ``aclose`` on every exit path.
    """

    __slots__ = ("conn", "_ws", "_parts", "_parts_size", "max_message_size", "closed", "too_big")

    def __init__(self, conn: Conn, ws: Connection, max_message_size: int = _MAX_MESSAGE_BYTES) -> None:
        self.conn = conn
        self._ws = ws
        self._parts: list[str | bytes] = []
        self._parts_size = 0
        self.max_message_size = max_message_size
        self.closed = False  # the connection is closing or closed: receive() returns nothing more
        self.too_big = False  # closed by us with 1009: a message over max_message_size

    @classmethod
    async def connect(cls, url: str, headers: list[tuple[bytes, bytes]], *, stream_conn: bool = False) -> "ClientWebSocket":
        """Open the connection and do the client upgrade. Raises :class:`ConnectError`
        for a rejection or a broken handshake, ``OSError`` when the host cannot be
        reached. ``stream_conn`` (tests) takes the ``wss://`` path (a trio stream) on ``ws://``."""
        parts = urlsplit(url)
        tls = parts.scheme == "wss"
        host = parts.hostname
        if not host:
            raise ConnectError(f"connect failed: no host in {url!r}")
        port = parts.port or (443 if tls else 80)
        resource = (parts.path or "/") + ("?" + parts.query if "?" in url else "")
        host_header = f"[{host}]" if ":" in host else host
        if port not in (80, 443):
            host_header += f":{port}"
        conn: Conn
        if tls:
            conn = await StreamConn.connect(host, port)
        elif stream_conn:
            conn = StreamConn(await trio.open_tcp_stream(host, port))
        else:
            conn = await SocketConn.connect(host, port)
        try:
            handshake = H11Handshake(ConnectionType.CLIENT)
            conn.write(handshake.send(Request(host=host_header, target=resource, extra_headers=headers)))
            await conn.drain()
            while True:
                data = await conn.receive_some()
                try:
                    handshake.receive_data(data or None)
                except RemoteProtocolError as exc:
                    raise ConnectError(f"handshake failed: {exc}") from None
                for event in handshake.events():
                    if isinstance(event, AcceptConnection):
                        assert handshake.connection is not None  # set on accept
                        return cls(conn, handshake.connection)
                    if isinstance(event, RejectConnection):
                        raise ConnectError(f"handshake failed: ConnectionRejected {event.status_code}")
                if not data or conn.broken:
                    raise ConnectError("connect failed: connection closed during the handshake")
        except BaseException:
            await conn.aclose()
            raise

    def send_text(self, text: str) -> bool:
        """Frame and write one text message; False when the connection is no longer open."""
        if self._ws.state is not ConnectionState.OPEN or self.conn.broken:
            return False
        self.conn.write(masked_text_frame(text))
        return not self.conn.broken

    async def receive(self) -> list[str | bytes]:
        """Wait for bytes from the server; return the messages they complete
        (possibly none). Sets ``closed`` at the server's Close, at end of stream,
        on a framing error (answered with its close code) or an oversized message."""
        ws = self._ws
        if ws.state is ConnectionState.CLOSED:
            self.closed = True
            await trio.lowlevel.checkpoint()
            return []
        data = await self.conn.receive_some()
        ws.receive_data(data or None)
        out: list[str | bytes] = []
        for event in ws.events():
            if isinstance(event, Message):
                if event.message_finished and not self._parts:
                    if len(event.data) > self.max_message_size:
                        self._close_too_big()
                        break
                    out.append(event.data)
                    continue
                self._parts.append(event.data)
                self._parts_size += len(event.data)
                if self._parts_size > self.max_message_size:
                    self._close_too_big()
                    break
                if event.message_finished:
                    joiner = "" if isinstance(event, TextMessage) else b""
                    out.append(joiner.join(self._parts))  # type: ignore[arg-type]
                    self._parts.clear()
                    self._parts_size = 0
            elif isinstance(event, Ping):
                if ws.state is ConnectionState.OPEN:
                    self.conn.write(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                # The server's Close is answered (REMOTE_CLOSING); a framing error
                # (still OPEN) is closed with its code; after EOF nothing is sent.
                if ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                    self.conn.write(ws.send(event.response()))
                self.closed = True
                break
        if not data:
            self.closed = True
        return out

    def _close_too_big(self) -> None:
        self.too_big = True
        self.closed = True
        if self._ws.state is ConnectionState.OPEN:
            self.conn.write(self._ws.send(CloseConnection(code=1009, reason="message too big")))

    async def close(self, timeout: float) -> None:
        """Our close handshake: Close (1000), then wait up to ``timeout`` for the
        server's Close (or end of stream). Does not close the socket: ``aclose``."""
        ws = self._ws
        if ws.state is ConnectionState.OPEN:
            self.conn.write(ws.send(CloseConnection(code=1000)))
        with trio.move_on_after(timeout):
            await self.conn.drain()
            while ws.state is not ConnectionState.CLOSED and not self.conn.broken:
                await self.receive()  # messages after our stop are dropped, as Twilio would

    async def aclose(self) -> None:
        """Close the socket (idempotent; safe under cancellation)."""
        await self.conn.aclose()

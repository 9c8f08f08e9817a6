"""A simulated phone caller that speaks the Twilio Media Streams protocol for real.

Used by ``callengine call`` (one call, printed as a timeline), by the load tester
(many concurrent callers, aggregated results) and by the end-to-end tests. It
opens a real client WebSocket (RFC 6455: HTTP/1.1 upgrade, masked client frames;
``wsproto`` for the upgrade and parsing) to the engine and behaves as Twilio does on a bidirectional
``<Connect><Stream>``:

* sends ``connected`` then ``start`` (a generated ``CA…`` callSid and ``MZ…``
  streamSid, the caller's ``customParameters``);
* streams inbound audio as ``media`` every 20 ms on *absolute* deadlines
  (``t0 + k * 20 ms``: no drift; a late tick is sent at once and counted), speech
  when the script is speaking, μ-law silence (0xFF) otherwise — Twilio never stops
  sending while the call is up;
* plays the agent's audio from a playback buffer that drains 160 bytes per 20 ms
  tick in real time, so it knows when each frame is *heard*;
* echoes each ``mark`` only when playback reaches it; on ``clear`` empties the
  buffer and echoes every pending mark at once (Twilio's documented behaviour);
* sends ``stop`` after the script, then closes the WebSocket (close handshake)
  and the socket.

Structure (one trio nursery per call; it owns every task; the call's
:class:`_WebSocket` and its socket are owned by ``run()`` and closed on every exit
path; nothing outlives ``run()``):

* the *clock* task: the 20 ms tick; sends one inbound frame and plays one
  outbound frame per tick, echoing marks that playback reached;
* the *receiver* task: the only reader of the socket; parses with
  :class:`transports.twilio.CallerSideStream`, appends audio and marks to the
  playback buffer, handles ``clear``;
* the *script* task: runs the steps (:class:`Say`, :class:`Pause`,
  :class:`WaitForReply`, :class:`BargeIn`, :class:`PressKey`), then sends ``stop``;
* the *flusher* task: sleeps unless the kernel's send buffer was full (never on
  loopback in practice); then it writes the backlog when the socket is writable.

Sending is synchronous: a message is serialized (taking its sequence number)
and handed to the socket in one step with no checkpoint in between, so
sequence numbers reach the wire in order without a lock, and what the kernel
does not take at once is queued behind any earlier backlog. The script waits on
one predicate at a time; the clock and the receiver evaluate it after each tick
or message and wake the script only when it holds (no polling sleeps, no wake-up
per tick). Nothing is logged per frame; numbers go into :class:`CallResult`.

Timing conventions: every ``*_ms`` field is milliseconds since ``start`` was sent
(``trio.current_time()``; real time under a real clock). ``speech_end_ms`` is the
moment the last *voiced* frame of a line ends, which is when it is sent: as
Twilio does, a frame leaves once its 20 ms of audio have been captured (the frame
of stream time ``[k*20, k*20+20)`` ms is sent at ``(k+1)*20`` ms). A clip's
leading and trailing silence is sent but not counted as speech.

Cost. The load tester runs many callers in one process on the cores of the server
under test, so per-tick cost matters. On ``ws://`` the caller owns a plain
non-blocking socket: a tick is one timer wake-up and one ``send`` system call; a
received message is one readiness wake-up and one ``recv``. Script lines are cut
into frames and classified voiced/unvoiced once per process (:func:`_line_frames`).
``wss://`` goes through ``trio.SSLStream`` and the flusher task (a wake-up per
message; fine for single calls, not meant for load).

Rejected designs: a separate playback task with its own clock (two clocks drift
and their ordering against mark echoes becomes racy); sleeping between frames
with relative ``trio.sleep(0.02)`` (accumulates drift: 2-3 % slow over a minute);
``trio_websocket`` with a send lock and a change event set on every tick and
message (the previous design: a reader task and a channel per connection, two
locks and a ``trio.Event`` per send, the script woken every tick, about 1.3 % of
a core per call); one task that both reads and ticks (cancelling the read at
every tick re-registers the socket with epoll each time); one process-wide timer
task driving every caller's tick (measured: no gain beyond noise, because on this
kind of machine what a tick costs is the event loop's wake-up itself, and the
phases of the calls must stay independent, as real calls' are).
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import os
import secrets
import socket
import ssl
import struct
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Mapping, Sequence, Union
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

from engine.audio import MULAW_SILENCE, frames, rms_pcm16, ulaw_decode
from transports.signature import compute as compute_signature
from transports.twilio import CallerSideStream, Clear, Mark, Media, ProtocolViolation, State

__all__ = [
    "Say",
    "Pause",
    "WaitForReply",
    "BargeIn",
    "PressKey",
    "Step",
    "Turn",
    "CallResult",
    "SimulatedCaller",
    "render_timeline",
    "new_call_sid",
    "new_stream_sid",
]

log = logging.getLogger(__name__)

FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
FRAME_S = 0.020
_SILENCE_FRAME = MULAW_SILENCE * FRAME_BYTES
_UNDERRUN_GAP_MS = 40.0  # a gap longer than this inside one agent utterance is an underrun
_LATE_S = 0.020  # a tick sent more than one frame late counts as late
_VOICED_RMS = 100.0  # PCM16 RMS (about -50 dBFS) above which a frame counts as speech
_MAX_MESSAGE_BYTES = 1024 * 1024  # larger engine messages end the call (close code 1009)
_DISCONNECT_TIMEOUT_S = 2.0  # how long our close handshake waits for the server's Close
_RECV_BYTES = 16 * 1024


# ------------------------------------------------------------------ script steps


@dataclass(frozen=True, slots=True)
class Say:
    """Speak a line: ``text`` (synthesized with espeak-ng) or ``audio`` (8 kHz μ-law)."""

    text: str | None = None
    audio: bytes | None = None
    voice: str = "en-us"
    rate_wpm: int = 160

    def __post_init__(self) -> None:
        if (self.text is None) == (self.audio is None):
            raise ValueError("Say needs exactly one of text= or audio=")
        if self.audio is not None and not self.audio:
            raise ValueError("Say audio is empty")


@dataclass(frozen=True, slots=True)
class Pause:
    """Stay silent (silence frames keep flowing) for ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class WaitForReply:
    """Wait until agent audio arrived after our last speech and playback finished
    (buffer empty for the caller's ``settle`` gap). ``timeout`` bounds the wait for
    the reply's first frame; hearing it out is bounded by ``max_reply_s``."""

    timeout: float = 10.0
    max_reply_s: float = 60.0


@dataclass(frozen=True, slots=True)
class BargeIn:
    """Wait until agent audio is playing (after our last speech), let ``after_ms``
    of it play, then speak over it."""

    after_ms: int = 300
    text: str | None = None
    audio: bytes | None = None
    voice: str = "en-us"
    rate_wpm: int = 160
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if (self.text is None) == (self.audio is None):
            raise ValueError("BargeIn needs exactly one of text= or audio=")


@dataclass(frozen=True, slots=True)
class PressKey:
    """Send a DTMF digit."""

    digit: str


Step = Union[Say, Pause, WaitForReply, BargeIn, PressKey]


# ------------------------------------------------------------------ results


@dataclass(slots=True)
class Turn:
    """One caller utterance and the agent's answer to it (times in ms since start)."""

    index: int
    label: str
    barge_in: bool = False
    speech_start_ms: float | None = None
    speech_end_ms: float | None = None
    reply_first_frame_ms: float | None = None
    clear_ms: float | None = None  # barge-in turns: from our speech start to the agent's clear

    @property
    def reply_latency_ms(self) -> float | None:
        """``reply_first_frame_ms - speech_end_ms`` (None until both are known)."""
        if self.reply_first_frame_ms is None or self.speech_end_ms is None:
            return None
        return self.reply_first_frame_ms - self.speech_end_ms


@dataclass(slots=True)
class CallResult:
    """Everything one simulated call measured. Filled by the caller's tasks; read it
    after ``SimulatedCaller.run()`` returns."""

    call_sid: str
    stream_sid: str
    connected: bool = False
    greeting_first_frame_ms: float | None = None
    turns: list[Turn] = field(default_factory=list)
    received_audio: bytearray = field(default_factory=bytearray)  # agent audio, as received
    received_bytes: int = 0
    heard_bytes: int = 0
    marks_received: int = 0
    marks_echoed: list[tuple[str, float]] = field(default_factory=list)  # (name, ms)
    clears_received: list[float] = field(default_factory=list)  # ms of each clear
    underruns: int = 0
    violations: collections.Counter = field(default_factory=collections.Counter)
    frames_sent: int = 0
    late_frames: int = 0
    dtmf_sent: int = 0
    duration_ms: float = 0.0
    closed_by_server: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Connected, ran the script to its end, and nothing timed out or failed
        (a hang-up by the server before the caller's ``stop`` is an error)."""
        return self.connected and not self.errors

    @property
    def received_seconds(self) -> float:
        return self.received_bytes / 8000.0


def new_call_sid() -> str:
    """A Twilio-shaped Call SID: ``CA`` + 32 hex digits."""
    return "CA" + secrets.token_hex(16)


def new_stream_sid() -> str:
    """A Twilio-shaped Stream SID: ``MZ`` + 32 hex digits."""
    return "MZ" + secrets.token_hex(16)


# ------------------------------------------------------------------ the WebSocket


class _Conn:
    """A byte pipe under one :class:`_WebSocket` (plain socket or TLS stream).

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


class _SocketConn(_Conn):
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
    async def connect(cls, host: str, port: int) -> "_SocketConn":
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


class _StreamConn(_Conn):
    """Any trio stream (TLS for ``wss://``); writes are queued and sent by the flusher."""

    __slots__ = ("_stream",)

    def __init__(self, stream: trio.abc.Stream) -> None:
        super().__init__()
        self._stream = stream

    @classmethod
    async def connect(cls, host: str, port: int) -> "_StreamConn":
        stream = await trio.open_ssl_over_tcp_stream(
            host, port, ssl_context=ssl.create_default_context(), https_compatible=True
        )
        return cls(stream)

    def write(self, data: bytes) -> None:
        if not self.broken:
            self._queue(data)

    async def drain(self) -> None:
        """Send the backlog. Each ``send_all`` is shielded (bounded by
        ``_DISCONNECT_TIMEOUT_S``): a cancelled ``send_all`` may have sent part of
        its bytes, and a message cut in half would corrupt the stream."""
        while self._backlog and not self.broken:
            data = bytes(self._backlog)
            self._backlog.clear()
            with trio.CancelScope(shield=True) as scope:
                scope.relative_deadline = _DISCONNECT_TIMEOUT_S
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


def _masked_text_frame(text: str) -> bytes:
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


class _ConnectError(Exception):
    """The connection or the upgrade failed; the message is the caller's error text."""


class _WebSocket:
    """The client end of one RFC 6455 WebSocket over a :class:`_Conn`. ``wsproto``
    does the upgrade, the control frames (ping, close) and all parsing (UTF-8
    checks, fragments, close codes); text messages out are :func:`_masked_text_frame`.

    Runs on the caller's trio thread. ``send_text`` is synchronous (see
    :class:`_Conn`). ``receive`` is called by one task at a time (the receiver,
    then the close handshake); it answers pings and the server's Close itself.
    Owned by ``SimulatedCaller.run()``, which calls ``aclose`` on every exit path.
    """

    __slots__ = ("conn", "_ws", "_parts", "_parts_size", "max_message_size", "closed", "too_big")

    def __init__(self, conn: _Conn, ws: Connection, max_message_size: int = _MAX_MESSAGE_BYTES) -> None:
        self.conn = conn
        self._ws = ws
        self._parts: list[str | bytes] = []
        self._parts_size = 0
        self.max_message_size = max_message_size
        self.closed = False  # the connection is closing or closed: receive() returns nothing more
        self.too_big = False  # closed by us with 1009: a message over max_message_size

    @classmethod
    async def connect(cls, url: str, headers: list[tuple[bytes, bytes]], *, stream_conn: bool = False) -> "_WebSocket":
        """Open the connection and do the client upgrade. Raises :class:`_ConnectError`
        for a rejection or a broken handshake, ``OSError`` when the host cannot be
        reached. ``stream_conn`` (tests) takes the ``wss://`` path (a trio stream) on ``ws://``."""
        parts = urlsplit(url)
        tls = parts.scheme == "wss"
        host = parts.hostname
        if not host:
            raise _ConnectError(f"connect failed: no host in {url!r}")
        port = parts.port or (443 if tls else 80)
        resource = (parts.path or "/") + ("?" + parts.query if "?" in url else "")
        host_header = f"[{host}]" if ":" in host else host
        if port not in (80, 443):
            host_header += f":{port}"
        conn: _Conn
        if tls:
            conn = await _StreamConn.connect(host, port)
        elif stream_conn:
            conn = _StreamConn(await trio.open_tcp_stream(host, port))
        else:
            conn = await _SocketConn.connect(host, port)
        try:
            handshake = H11Handshake(ConnectionType.CLIENT)
            conn.write(handshake.send(Request(host=host_header, target=resource, extra_headers=headers)))
            await conn.drain()
            while True:
                data = await conn.receive_some()
                try:
                    handshake.receive_data(data or None)
                except RemoteProtocolError as exc:
                    raise _ConnectError(f"handshake failed: {exc}") from None
                for event in handshake.events():
                    if isinstance(event, AcceptConnection):
                        assert handshake.connection is not None  # set on accept
                        return cls(conn, handshake.connection)
                    if isinstance(event, RejectConnection):
                        raise _ConnectError(f"handshake failed: ConnectionRejected {event.status_code}")
                if not data or conn.broken:
                    raise _ConnectError("connect failed: connection closed during the handshake")
        except BaseException:
            await conn.aclose()
            raise

    def send_text(self, text: str) -> bool:
        """Frame and write one text message; False when the connection is no longer open."""
        if self._ws.state is not ConnectionState.OPEN or self.conn.broken:
            return False
        self.conn.write(_masked_text_frame(text))
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


# ------------------------------------------------------------------ the caller


class _Playback:
    """The caller's jitter buffer: audio and marks in arrival order (caller's trio thread)."""

    __slots__ = ("items", "audio_bytes", "in_utterance", "gap_ticks", "utterance_start_ms", "last_heard_end_ms")

    def __init__(self) -> None:
        self.items: collections.deque[bytes | Mark] = collections.deque()
        self.audio_bytes = 0
        self.in_utterance = False
        self.gap_ticks = 0
        self.utterance_start_ms: float | None = None
        self.last_heard_end_ms: float | None = None

    @property
    def empty(self) -> bool:
        return not self.items


@functools.lru_cache(maxsize=64)
def _line_frames(audio: bytes) -> tuple[tuple[bytes, ...], int, int]:
    """A line cut into 20 ms frames, and its first and last voiced frame (the whole
    line when none is voiced). Cached: the load tester gives every caller the same
    ``bytes`` objects, so each line is decoded and measured once per process."""
    line = tuple(frames(audio, FRAME_BYTES))
    voiced = [i for i, f in enumerate(line) if rms_pcm16(ulaw_decode(f)) >= _VOICED_RMS]
    if voiced:
        return line, voiced[0], voiced[-1]
    return line, 0, len(line) - 1


class SimulatedCaller:
    """One simulated Twilio call against ``url`` running ``script``.

    ``run()`` is a trio coroutine; it owns a nursery with the clock, receiver,
    script and flusher tasks, and the WebSocket; it returns a :class:`CallResult`
    when the script has finished and ``stop`` was sent (then it closes the
    WebSocket, waiting up to 2 s for the server's Close), when the server closed
    the socket, or at ``call_timeout``. Connection failures, rejections (e.g. a
    403 for a bad signature) and timeouts are recorded in ``result.errors``, not
    raised, so a load test can aggregate them; bad script arguments raise
    ``ValueError`` at construction. Cancelling ``run()`` cancels all its tasks and
    closes the socket.

    ``signature`` is sent as ``X-Twilio-Signature`` on the upgrade; with
    ``auth_token`` instead, the signature of ``url`` is computed as Twilio would.
    """

    def __init__(
        self,
        url: str,
        script: Sequence[Step],
        *,
        custom_parameters: Mapping[str, str] | None = None,
        wait_greeting: bool = True,
        greeting_timeout: float = 10.0,
        settle: float = 0.4,
        signature: str | None = None,
        auth_token: str | None = None,
        connect_timeout: float = 10.0,
        call_timeout: float = 300.0,
        keep_audio: bool = True,
        call_sid: str | None = None,
        stream_sid: str | None = None,
        account_sid: str = "AC" + "0" * 32,
    ) -> None:
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"caller url must be ws:// or wss://, got {url!r}")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
        except ValueError as exc:
            raise ValueError(f"caller url {url!r}: {exc}") from None
        if not parts.hostname:
            raise ValueError(f"caller url has no host: {url!r}")
        for step in script:
            if not isinstance(step, (Say, Pause, WaitForReply, BargeIn, PressKey)):
                raise ValueError(f"unknown script step {step!r}")
        self.url = url
        self.script = list(script)
        self.custom_parameters = dict(custom_parameters or {})
        self.wait_greeting = wait_greeting
        self.greeting_timeout = greeting_timeout
        self.settle_ms = settle * 1000.0
        self.signature = signature
        if signature is None and auth_token:
            self.signature = compute_signature(auth_token, url)
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.keep_audio = keep_audio
        self.result = CallResult(call_sid or new_call_sid(), stream_sid or new_stream_sid())
        self._proto = CallerSideStream(self.result.call_sid, self.result.stream_sid, account_sid)
        self._playback = _Playback()
        self._speech: Sequence[bytes] = ()
        self._speech_pos = 0
        self._voiced = (0, 0)  # first and last voiced frame index of the current line
        self._speaking_turn: Turn | None = None
        self._last_speech_end_ms = 0.0
        self._waiter: tuple[Callable[[], bool], trio.Event] | None = None
        self._t0 = 0.0
        self._ws: _WebSocket | None = None
        self._cancel: trio.CancelScope | None = None
        self._use_stream_conn = False  # tests: drive ws:// through the wss:// (trio stream) path

    # -------------------------------------------------------------- helpers

    def _now_ms(self) -> float:
        return (trio.current_time() - self._t0) * 1000.0

    def _check_waiter(self) -> None:
        """After a tick or a received message: wake the script if what it waits for holds."""
        waiter = self._waiter
        if waiter is not None and waiter[0]():
            self._waiter = None
            waiter[1].set()

    async def _wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (the script task) until ``predicate()`` holds, up to ``timeout`` s.
        The predicate only reads state that changes on a tick or a received
        message, so it is checked there (:meth:`_check_waiter`) and nowhere else."""
        if predicate():
            return True
        event = trio.Event()
        self._waiter = (predicate, event)
        try:
            with trio.move_on_after(timeout):
                await event.wait()
                return True
            return False
        finally:
            if self._waiter is not None and self._waiter[1] is event:
                self._waiter = None

    def _write(self, text: str | None) -> None:
        """Send one message now (synchronous; see the module docstring). A dead
        connection ends the call: the task goes on to its next checkpoint, where
        the cancelled nursery stops it."""
        if text is None:
            return
        ws = self._ws
        if ws is None or not ws.send_text(text):
            self._server_closed()

    def _server_closed(self) -> None:
        if self._proto.state is not State.STOPPED and not self.result.closed_by_server:
            # The server hung up on a call in progress: a failed call, not a
            # finished one (``ok`` is False and ``callengine call`` exits 1).
            self.result.closed_by_server = True
            self.result.errors.append("the server hung up mid-call")
        if self._cancel is not None:
            self._cancel.cancel()

    # -------------------------------------------------------------- entry point

    async def run(self) -> CallResult:
        """Place the call and return its :class:`CallResult` (see the class docstring)."""
        result = self.result
        audio = await self._prepare_audio()
        if audio is None:
            return result
        headers = [(b"X-Twilio-Signature", self.signature.encode())] if self.signature else []
        started = trio.current_time()
        with trio.move_on_after(self.call_timeout) as timeout_scope:
            ws: _WebSocket | None = None
            try:
                with trio.fail_after(self.connect_timeout):
                    ws = await _WebSocket.connect(self.url, headers, stream_conn=self._use_stream_conn)
            except _ConnectError as exc:
                result.errors.append(str(exc))
            except trio.TooSlowError:
                result.errors.append("handshake failed: ConnectionTimeout")
            except OSError as exc:
                result.errors.append(f"connect failed: {exc!r}")
            if ws is not None:
                try:
                    self._ws = ws
                    result.connected = True
                    await self._call(ws, audio)
                    if ws.too_big:
                        result.errors.append(f"engine message over {ws.max_message_size} bytes")
                    await ws.close(_DISCONNECT_TIMEOUT_S)
                finally:
                    await ws.aclose()
        if timeout_scope.cancelled_caught:
            result.errors.append(f"call timed out after {self.call_timeout:.1f} s")
        result.duration_ms = (trio.current_time() - started) * 1000.0
        result.violations = collections.Counter(self._proto.violations)
        log.debug(
            "simulated call ended",
            extra={"call_sid": result.call_sid, "ok": result.ok, "turns": len(result.turns)},
        )
        return result

    async def _prepare_audio(self) -> dict[int, bytes] | None:
        """Synthesize every text line up front (in a worker thread) so that speech
        synthesis never disturbs the call's timing."""
        from transports.caller_voice import VoiceUnavailable, synthesize_line

        audio: dict[int, bytes] = {}
        for i, step in enumerate(self.script):
            if isinstance(step, (Say, BargeIn)):
                if step.audio is not None:
                    audio[i] = step.audio
                    continue
                try:
                    audio[i] = await trio.to_thread.run_sync(synthesize_line, step.text, step.voice, step.rate_wpm)
                except (VoiceUnavailable, ValueError) as exc:
                    self.result.errors.append(f"cannot synthesize step {i}: {exc}")
                    return None
        return audio

    async def _call(self, ws: _WebSocket, audio: dict[int, bytes]) -> None:
        self._write(self._proto.connected())
        self._write(self._proto.start(self.custom_parameters))
        self._t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            self._cancel = nursery.cancel_scope
            nursery.start_soon(self._clock)
            nursery.start_soon(self._receiver)
            nursery.start_soon(self._run_script, audio)
            nursery.start_soon(ws.conn.flush_forever)

    # -------------------------------------------------------------- clock task

    async def _clock(self) -> None:
        """The 20 ms tick: one inbound frame out, one outbound frame played."""
        result = self.result
        proto = self._proto
        t0 = self._t0
        tick = 0
        while True:
            # Twilio sends a frame once its 20 ms of audio have been captured: the
            # frame whose audio starts at stream time tick * 20 ms leaves at the end
            # of that audio, (tick + 1) * 20 ms. (Sending it at its start put every
            # frame 20 ms ahead of the speech it carries and flattered every latency
            # measured from the caller's speech by one frame.)
            deadline = t0 + (tick + 1) * FRAME_S
            await trio.sleep_until(deadline)
            now = trio.current_time()
            if now - deadline > _LATE_S:
                result.late_frames += 1
            frame = self._next_speech_frame(tick * FRAME_S * 1000.0)  # this tick's nominal stream time
            if proto.state is State.STREAMING:
                result.frames_sent += 1
                self._write(proto.media(frame, tick * 20))
            for name in self._play_tick((now - t0) * 1000.0):
                self._write(self._echo(name))
            self._check_waiter()
            tick += 1

    def _next_speech_frame(self, now_ms: float) -> bytes:
        """The next frame of the current line, or silence. Stamps the turn's speech
        start/end at its first/last *voiced* frame, so a clip's leading and trailing
        silence do not count as speech (the agent's VAD would not count it either)."""
        turn = self._speaking_turn
        if turn is None:
            return _SILENCE_FRAME
        pos = self._speech_pos
        frame = self._speech[pos]
        first, last = self._voiced
        if pos == first:
            turn.speech_start_ms = now_ms
        if pos == last:
            turn.speech_end_ms = now_ms + FRAME_S * 1000.0
            self._last_speech_end_ms = turn.speech_end_ms
        self._speech_pos = pos + 1
        if self._speech_pos >= len(self._speech):
            self._speaking_turn = None
            self._speech = ()
        return frame

    def _echo(self, name: str) -> str | None:
        if self._proto.state is not State.STREAMING:
            return None
        self.result.marks_echoed.append((name, self._now_ms()))
        return self._proto.mark(name)

    def _play_tick(self, now_ms: float) -> list[str]:
        """Play up to 20 ms of agent audio; return the marks playback reached."""
        pb = self._playback
        reached: list[str] = []
        while pb.items and isinstance(pb.items[0], Mark):  # audio before them has been heard
            reached.append(pb.items.popleft().name)
            pb.in_utterance = False
            pb.gap_ticks = 0
        need = FRAME_BYTES
        while need and pb.items and not isinstance(pb.items[0], Mark):
            head = pb.items[0]
            if len(head) <= need:
                pb.items.popleft()
                need -= len(head)
            else:
                pb.items[0] = head[need:]
                need = 0
        played = FRAME_BYTES - need
        if played:
            pb.audio_bytes -= played
            self.result.heard_bytes += played
            if pb.in_utterance and pb.gap_ticks * FRAME_S * 1000.0 > _UNDERRUN_GAP_MS:
                self.result.underruns += 1
            if not pb.in_utterance:
                pb.utterance_start_ms = now_ms
            pb.in_utterance = True
            pb.gap_ticks = 0
            pb.last_heard_end_ms = now_ms + FRAME_S * 1000.0
        elif pb.in_utterance:
            pb.gap_ticks += 1
        return reached

    # -------------------------------------------------------------- receiver task

    async def _receiver(self) -> None:
        """The socket's only reader: audio and marks into playback; clear."""
        ws = self._ws
        assert ws is not None  # set before the tasks start
        while True:
            messages = await ws.receive()
            if messages:
                now_ms = self._now_ms()
                for text in messages:
                    self._on_message(text, now_ms)
                self._check_waiter()
            if ws.closed:
                self._server_closed()
                return

    def _on_message(self, text: str | bytes, now_ms: float) -> None:
        result = self.result
        pb = self._playback
        for event in self._proto.receive(text):
            if isinstance(event, Media):
                if result.greeting_first_frame_ms is None:
                    result.greeting_first_frame_ms = now_ms
                turn = result.turns[-1] if result.turns else None
                if (
                    turn is not None
                    and turn.reply_first_frame_ms is None
                    and turn.speech_end_ms is not None
                    and now_ms >= turn.speech_end_ms
                ):
                    turn.reply_first_frame_ms = now_ms
                pb.items.append(event.payload)
                pb.audio_bytes += len(event.payload)
                result.received_bytes += len(event.payload)
                if self.keep_audio:
                    result.received_audio += event.payload
            elif isinstance(event, Mark):
                result.marks_received += 1
                pb.items.append(event)
            elif isinstance(event, Clear):
                self._on_clear(now_ms)
            elif isinstance(event, ProtocolViolation):
                pass  # counted in self._proto.violations; dropped as Twilio would

    def _on_clear(self, now_ms: float) -> None:
        pb = self._playback
        self.result.clears_received.append(now_ms)
        pending = [item.name for item in pb.items if isinstance(item, Mark)]
        pb.items.clear()
        pb.audio_bytes = 0
        pb.in_utterance = False
        pb.gap_ticks = 0
        for turn in reversed(self.result.turns):
            if turn.barge_in and turn.speech_start_ms is not None:
                if turn.clear_ms is None:
                    turn.clear_ms = now_ms - turn.speech_start_ms
                break
        for name in pending:
            self._write(self._echo(name))

    # -------------------------------------------------------------- script task

    def _agent_playing_since(self, since_ms: float) -> bool:
        pb = self._playback
        return pb.in_utterance and (pb.utterance_start_ms or 0.0) >= since_ms

    def _playback_done(self) -> bool:
        pb = self._playback
        if not pb.empty or pb.last_heard_end_ms is None:
            return False
        return self._now_ms() - pb.last_heard_end_ms >= self.settle_ms

    async def _speak(self, index: int, label: str, audio: bytes, barge_in: bool) -> None:
        turn = Turn(index=len(self.result.turns) + 1, label=label, barge_in=barge_in)
        self.result.turns.append(turn)
        line, first, last = _line_frames(audio)
        self._voiced = (first, last)
        self._speech, self._speech_pos = line, 0
        self._speaking_turn = turn
        await self._wait_until(lambda: self._speaking_turn is not turn, math.inf)

    async def _run_script(self, audio: dict[int, bytes]) -> None:
        result = self.result
        if self.wait_greeting:
            if not await self._wait_until(lambda: result.greeting_first_frame_ms is not None, self.greeting_timeout):
                result.errors.append(f"no greeting within {self.greeting_timeout:.1f} s")
            elif not await self._wait_until(self._playback_done, 60.0):
                result.errors.append("greeting did not finish within 60 s")
        for i, step in enumerate(self.script):
            if isinstance(step, Say):
                await self._speak(i, step.text or f"<audio {len(step.audio) / 8000:.2f} s>", audio[i], False)
            elif isinstance(step, Pause):
                await trio.sleep(step.seconds)
            elif isinstance(step, WaitForReply):
                turn = result.turns[-1] if result.turns else None
                if turn is None:
                    continue
                if not await self._wait_until(lambda t=turn: t.reply_first_frame_ms is not None, step.timeout):
                    result.errors.append(f"turn {turn.index}: no reply within {step.timeout:.1f} s")
                    continue
                if not await self._wait_until(self._playback_done, step.max_reply_s):
                    result.errors.append(f"turn {turn.index}: reply did not finish within {step.max_reply_s:.1f} s")
            elif isinstance(step, BargeIn):
                playing = partial(self._agent_playing_since, self._last_speech_end_ms)
                if not await self._wait_until(playing, step.timeout):
                    result.errors.append(f"step {i}: no agent audio to barge in on within {step.timeout:.1f} s")
                    continue
                await trio.sleep(step.after_ms / 1000.0)
                await self._speak(i, step.text or f"<audio {len(step.audio) / 8000:.2f} s>", audio[i], True)
            elif isinstance(step, PressKey):
                self._write(self._proto.dtmf(step.digit))
                result.dtmf_sent += 1
        # hang up: stop is serialized and written in one step, so after every frame sent
        if self._proto.state is State.STREAMING:
            self._write(self._proto.stop())
        if self._cancel is not None:
            self._cancel.cancel()


# ------------------------------------------------------------------ rendering


def _ms(value: float | None) -> str:
    return "   -   " if value is None else f"{value:7.0f}"


def render_timeline(result: CallResult) -> str:
    """A human-readable summary of one call for the CLI (times in ms since start)."""
    lines = [
        f"call {result.call_sid}  stream {result.stream_sid}  "
        f"{'ok' if result.ok else 'FAILED'}  {result.duration_ms / 1000:.1f} s",
        f"  greeting first frame {_ms(result.greeting_first_frame_ms)} ms",
    ]
    for turn in result.turns:
        kind = "barge-in" if turn.barge_in else "turn"
        lines.append(
            f"  {kind:8} {turn.index:>2} {turn.label[:40]!r:44} speech {_ms(turn.speech_start_ms)} -> "
            f"{_ms(turn.speech_end_ms)}  reply {_ms(turn.reply_first_frame_ms)}  "
            f"latency {_ms(turn.reply_latency_ms)}"
            + (f"  clear after {turn.clear_ms:.0f} ms" if turn.clear_ms is not None else "")
        )
    violations = ", ".join(f"{k}={v}" for k, v in sorted(result.violations.items())) or "none"
    lines.append(
        f"  agent audio {result.received_seconds:.2f} s received, {result.heard_bytes / 8000:.2f} s heard; "
        f"marks {result.marks_received} received / {len(result.marks_echoed)} echoed; "
        f"clears {len(result.clears_received)}; underruns {result.underruns}; "
        f"frames sent {result.frames_sent} ({result.late_frames} late); violations {violations}"
    )
    if result.closed_by_server:
        lines.append("  the server closed the connection before the caller hung up")
    for error in result.errors:
        lines.append(f"  error: {error}")
    return "\n".join(lines)

"""A simulated phone caller that speaks the Twilio Media Streams protocol for real.

Used by ``callengine call`` (one call, printed as a timeline), by the load tester
(many concurrent callers, aggregated results) and by the end-to-end tests. It
connects to the engine's WebSocket with ``trio_websocket`` and behaves as Twilio
does on a bidirectional ``<Connect><Stream>``:

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
* sends ``stop`` after the script and closes the socket.

Structure (one trio nursery per call; it owns every task and the socket; nothing
outlives ``run()``):

* the *clock* task: the 20 ms tick; sends one inbound frame and plays one
  outbound frame per tick, echoing marks that playback reached;
* the *receiver* task: the only reader of the socket; parses with
  :class:`transports.twilio.CallerSideStream`, appends audio and marks to the
  playback buffer, handles ``clear``;
* the *script* task: runs the steps (:class:`Say`, :class:`Pause`,
  :class:`WaitForReply`, :class:`BargeIn`, :class:`PressKey`), then sends ``stop``.

All sends go through one lock, and each message is serialized inside it, so
sequence numbers reach the wire in order. Waits are woken by a change event set
on every tick and every received message (no polling sleeps). Nothing is logged
per frame; numbers go into :class:`CallResult`.

Timing conventions: every ``*_ms`` field is milliseconds since ``start`` was sent
(``trio.current_time()``; real time under a real clock). ``speech_end_ms`` is the
moment the last *voiced* frame of a line ends (its send time + 20 ms); a clip's
leading and trailing silence is sent but not counted as speech.

Rejected designs: a separate playback task with its own clock (two clocks drift
and their ordering against mark echoes becomes racy), and sleeping between frames
with relative ``trio.sleep(0.02)`` (accumulates drift: 2-3 % slow over a minute).
"""

from __future__ import annotations

import collections
import logging
import math
import secrets
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Mapping, Sequence, Union

import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

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
        """Connected, ran the script, and nothing timed out or failed."""
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


class SimulatedCaller:
    """One simulated Twilio call against ``url`` running ``script``.

    ``run()`` is a trio coroutine; it owns a nursery with the clock, receiver and
    script tasks and the WebSocket, and returns a :class:`CallResult` when the
    script has finished and ``stop`` was sent, when the server closed the socket,
    or at ``call_timeout``. Connection failures, rejections (e.g. a 403 for a bad
    signature) and timeouts are recorded in ``result.errors``, not raised, so a
    load test can aggregate them; bad script arguments raise ``ValueError`` at
    construction. Cancelling ``run()`` closes the socket and cancels all its tasks.

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
        self._speech: list[bytes] = []
        self._speech_pos = 0
        self._voiced = (0, 0)  # first and last voiced frame index of the current line
        self._speaking_turn: Turn | None = None
        self._last_speech_end_ms = 0.0
        self._changed = trio.Event()
        self._send_lock = trio.Lock()
        self._t0 = 0.0
        self._ws = None
        self._cancel: trio.CancelScope | None = None

    # -------------------------------------------------------------- helpers

    def _now_ms(self) -> float:
        return (trio.current_time() - self._t0) * 1000.0

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with trio.move_on_after(timeout):
            while not predicate():
                await self._changed.wait()
            return True
        return False

    async def _send(self, make: Callable[[], str | None]) -> None:
        """Serialize (inside the lock, so sequence numbers stay ordered) and send."""
        async with self._send_lock:
            text = make()
            if text is None:
                return
            try:
                await self._ws.send_message(text)
            except ConnectionClosed:
                self._server_closed()
                await trio.lowlevel.checkpoint()  # raises Cancelled: the call is over

    def _server_closed(self) -> None:
        if self._proto.state is not State.STOPPED:
            self.result.closed_by_server = True
        if self._cancel is not None:
            self._cancel.cancel()

    # -------------------------------------------------------------- entry point

    async def run(self) -> CallResult:
        """Place the call and return its :class:`CallResult` (see the class docstring)."""
        result = self.result
        audio = await self._prepare_audio()
        if audio is None:
            return result
        headers = [(b"X-Twilio-Signature", self.signature.encode())] if self.signature else None
        started = trio.current_time()
        with trio.move_on_after(self.call_timeout) as timeout_scope:
            try:
                async with open_websocket_url(
                    self.url,
                    extra_headers=headers,
                    connect_timeout=self.connect_timeout,
                    disconnect_timeout=2.0,
                    max_message_size=1024 * 1024,
                ) as ws:
                    self._ws = ws
                    result.connected = True
                    await self._call(ws, audio)
            except HandshakeError as exc:  # ConnectionRejected, ConnectionTimeout
                status = getattr(exc, "status_code", None)
                result.errors.append(f"handshake failed: {type(exc).__name__}" + (f" {status}" if status else ""))
            except ConnectionClosed:
                if result.connected:
                    self._server_closed()
                else:
                    result.errors.append("connect failed: connection closed during the handshake")
            except OSError as exc:
                result.errors.append(f"connect failed: {exc!r}")
            except trio.TooSlowError as exc:
                result.errors.append(f"connect failed: {exc!r}")
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

    async def _call(self, ws, audio: dict[int, bytes]) -> None:
        await ws.send_message(self._proto.connected())
        await ws.send_message(self._proto.start(self.custom_parameters))
        self._t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            self._cancel = nursery.cancel_scope
            nursery.start_soon(self._clock)
            nursery.start_soon(self._receiver)
            nursery.start_soon(self._run_script, audio)

    # -------------------------------------------------------------- clock task

    async def _clock(self) -> None:
        """The 20 ms tick: one inbound frame out, one outbound frame played."""
        tick = 0
        while True:
            deadline = self._t0 + tick * FRAME_S
            await trio.sleep_until(deadline)
            if trio.current_time() - deadline > _LATE_S:
                self.result.late_frames += 1
            now_ms = tick * FRAME_S * 1000.0  # this tick's nominal stream time
            frame = self._next_speech_frame(now_ms)
            stamp = tick * 20
            await self._send(lambda f=frame, ts=stamp: self._inbound_media(f, ts))
            for name in self._play_tick(self._now_ms()):
                await self._send(lambda n=name: self._echo(n))
            self._notify()
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
            self._speech = []
        return frame

    def _inbound_media(self, frame: bytes, stamp_ms: int) -> str | None:
        if self._proto.state is not State.STREAMING:
            return None
        self.result.frames_sent += 1
        return self._proto.media(frame, stamp_ms)

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
        result = self.result
        pb = self._playback
        while True:
            try:
                text = await self._ws.get_message()
            except ConnectionClosed:
                self._server_closed()
                return
            now_ms = self._now_ms()
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
                    await self._on_clear(now_ms)
                elif isinstance(event, ProtocolViolation):
                    pass  # counted in self._proto.violations; dropped as Twilio would
            self._notify()

    async def _on_clear(self, now_ms: float) -> None:
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
            await self._send(lambda n=name: self._echo(n))

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
        line = frames(audio, FRAME_BYTES)
        voiced = [i for i, f in enumerate(line) if rms_pcm16(ulaw_decode(f)) >= _VOICED_RMS]
        self._voiced = (voiced[0], voiced[-1]) if voiced else (0, len(line) - 1)
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
                await self._send(lambda d=step.digit: self._proto.dtmf(d))
                result.dtmf_sent += 1
        # hang up: stop goes out under the send lock, so after any frame in flight
        await self._send(lambda: self._proto.stop() if self._proto.state is State.STREAMING else None)
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

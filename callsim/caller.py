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
:class:`ClientWebSocket` and its socket are owned by ``run()`` and closed on every exit
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
into frames and classified voiced/unvoiced once per process (:func:`line_frames`).
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
import logging
import math
from functools import partial
from typing import Callable, Mapping, Sequence
from urllib.parse import urlsplit

import trio

from callsim.playback import FRAME_BYTES, Playback, line_frames
from callsim.script import BargeIn, CallResult, Pause, PressKey, Say, Step, Turn, WaitForReply, new_call_sid, new_stream_sid
from callsim.websocket import DISCONNECT_TIMEOUT_S, ClientWebSocket, ConnectError
from engine.audio import MULAW_SILENCE
from transports.signature import compute as compute_signature
from transports.twilio import CallerSideStream, Clear, Mark, Media, ProtocolViolation, State

__all__ = ["SimulatedCaller"]

log = logging.getLogger(__name__)

FRAME_S = 0.020
_SILENCE_FRAME = MULAW_SILENCE * FRAME_BYTES
_UNDERRUN_GAP_MS = 40.0  # a gap longer than this inside one agent utterance is an underrun
_LATE_S = 0.020  # a tick sent more than one frame late counts as late


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
        self._playback = Playback()
        self._speech: Sequence[bytes] = ()
        self._speech_pos = 0
        self._voiced = (0, 0)  # first and last voiced frame index of the current line
        self._speaking_turn: Turn | None = None
        self._last_speech_end_ms = 0.0
        self._waiter: tuple[Callable[[], bool], trio.Event] | None = None
        self._t0 = 0.0
        self._ws: ClientWebSocket | None = None
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
            ws: ClientWebSocket | None = None
            try:
                with trio.fail_after(self.connect_timeout):
                    ws = await ClientWebSocket.connect(self.url, headers, stream_conn=self._use_stream_conn)
            except ConnectError as exc:
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
                    await ws.close(DISCONNECT_TIMEOUT_S)
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
        from callsim.voice import VoiceUnavailable, synthesize_line

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

    async def _call(self, ws: ClientWebSocket, audio: dict[int, bytes]) -> None:
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
        line, first, last = line_frames(audio)
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

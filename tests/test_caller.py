"""SimulatedCaller against a real trio-websocket server running a small fake agent.

The fake agent speaks the server side of the protocol through the real
``TwilioStream``: on ``start`` it sends a greeting (a burst of frames, then a mark),
detects caller speech (non-silence frames), replies after a run of silence, and
sends ``clear`` when the caller speaks over its audio. Everything runs over real
loopback WebSockets in real time (pacing is the thing under test), so the timings
asserted have generous margins.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, field

import numpy as np
import pytest
import trio
from trio_websocket import ConnectionClosed, serve_websocket

from engine.audio import frames, ulaw_encode
from transports import signature
from callsim import (
    BargeIn,
    CallResult,
    Pause,
    PressKey,
    Say,
    SimulatedCaller,
    WaitForReply,
    render_timeline,
)
from callsim.voice import synthesize_line
from transports.twilio import Dtmf, Mark, Media, Start, Stop, TwilioStream

SILENCE = b"\xff" * 160


def tone(seconds: float, freq: float = 440.0) -> bytes:
    t = np.arange(int(8000 * seconds)) / 8000
    return ulaw_encode((6000 * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes())


AGENT_FRAME = tone(0.02, 300.0)


@dataclass
class FakeAgent:
    greeting_frames: int = 10
    greeting_split_gap_s: float = 0.0  # >0: send half the greeting, wait, send the rest
    reply_frames: int = 10
    silence_frames_to_reply: int = 8
    clear_on_barge_in: bool = True
    junk_after_greeting: str | None = None
    auth_token: str | None = None
    # what it observed (times are trio.current_time())
    start: Start | None = None
    media: list[tuple[float, Media]] = field(default_factory=list)
    marks_sent: dict[str, float] = field(default_factory=dict)
    marks_echoed: dict[str, float] = field(default_factory=dict)
    clears_sent: list[float] = field(default_factory=list)
    dtmf: list[str] = field(default_factory=list)
    stopped: bool = False
    rejected: int = 0
    violations: dict = field(default_factory=dict)
    _playing_until: float = 0.0
    _replies: int = 0

    async def handler(self, request) -> None:
        if self.auth_token is not None:
            headers = {k.lower(): v for k, v in request.headers}
            sig = headers.get(b"x-twilio-signature", b"").decode()
            url = f"ws://127.0.0.1:{request.local.port}{request.path}"
            if not signature.valid_ws_upgrade(self.auth_token, url, sig):
                self.rejected += 1
                await request.reject(403)
                return
        ws = await request.accept()
        stream = TwilioStream()
        speaking = False
        silent_run = 0
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    text = await ws.get_message()
                    now = trio.current_time()
                    for ev in stream.receive(text):
                        if isinstance(ev, Start):
                            self.start = ev
                            nursery.start_soon(self._greet, ws, stream)
                        elif isinstance(ev, Media):
                            self.media.append((now, ev))
                            if ev.payload != SILENCE:
                                if not speaking and self.clear_on_barge_in and now < self._playing_until:
                                    self._playing_until = now
                                    self.clears_sent.append(now)
                                    await ws.send_message(stream.clear())
                                speaking, silent_run = True, 0
                            elif speaking:
                                silent_run += 1
                                if silent_run >= self.silence_frames_to_reply:
                                    speaking = False
                                    self._replies += 1
                                    nursery.start_soon(
                                        self._burst, ws, stream, self.reply_frames, f"reply-{self._replies}"
                                    )
                        elif isinstance(ev, Mark):
                            self.marks_echoed[ev.name] = now
                        elif isinstance(ev, Dtmf):
                            self.dtmf.append(ev.digit)
                        elif isinstance(ev, Stop):
                            self.stopped = True
                    if stream.state.value == "stopped":
                        nursery.cancel_scope.cancel()
                        break
        except ConnectionClosed:
            pass
        self.violations = dict(stream.violations)

    async def _burst(self, ws, stream: TwilioStream, n: int, mark: str | None) -> None:
        now = trio.current_time()
        self._playing_until = max(self._playing_until, now) + n * 0.02
        for _ in range(n):
            await ws.send_message(stream.media(AGENT_FRAME))
        if mark is not None:
            self.marks_sent[mark] = trio.current_time()
            await ws.send_message(stream.mark(mark))

    async def _greet(self, ws, stream: TwilioStream) -> None:
        if self.greeting_split_gap_s:
            half = self.greeting_frames // 2
            await self._burst(ws, stream, half, None)
            await trio.sleep(half * 0.02 + self.greeting_split_gap_s)
            await self._burst(ws, stream, self.greeting_frames - half, "greeting")
        else:
            await self._burst(ws, stream, self.greeting_frames, "greeting")
        if self.junk_after_greeting is not None:
            await ws.send_message(self.junk_after_greeting)


@contextlib.asynccontextmanager
async def serving(agent: FakeAgent):
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, agent.handler, "127.0.0.1", 0, None)
        yield f"ws://127.0.0.1:{server.port}/twilio/media?call=1"
        nursery.cancel_scope.cancel()


async def call(agent: FakeAgent, script, **kwargs) -> CallResult:
    async with serving(agent) as url:
        return await SimulatedCaller(url, script, call_timeout=20.0, **kwargs).run()


# ------------------------------------------------------------------ tests


async def test_pacing_is_real_time_and_messages_are_twilio_shaped() -> None:
    agent = FakeAgent(greeting_frames=0)
    t0 = trio.current_time()
    result = await call(agent, [Say(audio=tone(1.0)), Pause(0.1)], wait_greeting=False,
                        custom_parameters={"business": "demo", "from": "+972501234567"})
    elapsed = trio.current_time() - t0
    assert result.ok, result.errors
    assert agent.stopped
    assert agent.start is not None
    assert agent.start.call_sid == result.call_sid and result.call_sid.startswith("CA") and len(result.call_sid) == 34
    assert agent.start.stream_sid.startswith("MZ") and len(agent.start.stream_sid) == 34
    assert agent.start.custom_parameters == {"business": "demo", "from": "+972501234567"}
    speech = [(t, m) for t, m in agent.media if m.payload != SILENCE]
    assert len(speech) == 50
    span = speech[-1][0] - speech[0][0]
    assert 0.95 <= span + 0.02 <= 1.4, span  # 50 frames of 20 ms take about a second
    assert b"".join(m.payload for _, m in speech) == tone(1.0)
    # Twilio-shaped counters: chunk +1, timestamp +20 ms, every frame 160 bytes
    chunks = [m.chunk for _, m in agent.media]
    stamps = [m.timestamp_ms for _, m in agent.media]
    assert chunks == list(range(1, len(chunks) + 1))
    assert stamps == [20 * i for i in range(len(stamps))]
    assert all(len(m.payload) == 160 for _, m in agent.media)
    # the call lasted as long as its audio (1 s speech + 0.1 s pause), not faster
    assert elapsed >= 1.05
    assert result.late_frames <= 2
    assert result.frames_sent == len(agent.media)
    assert agent.violations == {}


async def test_greeting_mark_echoed_only_after_playback() -> None:
    agent = FakeAgent(greeting_frames=25)  # 0.5 s sent as one burst
    result = await call(agent, [Pause(0.05)], wait_greeting=True, settle=0.1)
    assert result.ok, result.errors
    assert result.greeting_first_frame_ms is not None and result.greeting_first_frame_ms < 300
    assert result.received_bytes == 25 * 160 and result.heard_bytes == 25 * 160
    assert result.received_audio == AGENT_FRAME * 25
    assert [name for name, _ in result.marks_echoed] == ["greeting"]
    delay = agent.marks_echoed["greeting"] - agent.marks_sent["greeting"]
    assert 0.45 <= delay <= 0.8, delay  # echoed when 0.5 s of audio had played, not on arrival
    assert result.marks_received == 1
    assert result.underruns == 0


async def test_conversation_turns_have_timings() -> None:
    agent = FakeAgent(greeting_frames=10, reply_frames=15, silence_frames_to_reply=8)
    script = [Say(audio=tone(0.3)), WaitForReply(timeout=3), PressKey("5"), Say(audio=tone(0.2, 600)), WaitForReply(3)]
    result = await call(agent, script, settle=0.15)
    assert result.ok, result.errors
    assert len(result.turns) == 2
    for turn in result.turns:
        assert turn.speech_start_ms is not None and turn.speech_end_ms is not None
        assert turn.speech_start_ms >= result.greeting_first_frame_ms  # waited for the greeting
        assert turn.reply_first_frame_ms is not None
        # agent replies after 8 silent frames (160 ms) + loopback: well under a second
        assert 120 <= turn.reply_latency_ms <= 700, turn.reply_latency_ms
    assert result.turns[0].speech_end_ms - result.turns[0].speech_start_ms == pytest.approx(300, abs=1)
    assert [name for name, _ in result.marks_echoed] == ["greeting", "reply-1", "reply-2"]
    assert result.received_bytes == (10 + 15 + 15) * 160
    assert agent.dtmf == ["5"]
    assert result.underruns == 0
    assert not result.clears_received
    text = render_timeline(result)
    assert result.call_sid in text and "latency" in text and "turn      2" in text


async def test_barge_in_clear_empties_playback_and_echoes_marks() -> None:
    agent = FakeAgent(greeting_frames=5, reply_frames=100, silence_frames_to_reply=5)  # 2 s replies
    script = [Say(audio=tone(0.2)), BargeIn(after_ms=300, audio=tone(0.3, 700)), WaitForReply(timeout=3)]
    t0 = trio.current_time()
    result = await call(agent, script, settle=0.1)
    elapsed = trio.current_time() - t0
    assert result.ok, result.errors
    assert len(agent.clears_sent) == 1
    assert len(result.clears_received) == 1
    barge = result.turns[1]
    assert barge.barge_in and barge.clear_ms is not None and 0 <= barge.clear_ms < 300
    # the pending mark was echoed at once on clear, long before the 2 s reply could have played
    echo_delay = agent.marks_echoed["reply-1"] - agent.clears_sent[0]
    assert 0 <= echo_delay < 0.15, echo_delay
    # everything was received, but most of it never played
    assert result.received_bytes == (5 + 100 + 100) * 160
    assert result.heard_bytes <= (5 + 100 + 100) * 160 - 50 * 160  # at least 1 s of reply 1 never played
    assert [name for name, _ in result.marks_echoed] == ["greeting", "reply-1", "reply-2"]
    assert elapsed < 5.0  # the second 2 s reply plays out; the first one was cut


async def test_underrun_counted_when_playback_runs_dry_mid_utterance() -> None:
    agent = FakeAgent(greeting_frames=20, greeting_split_gap_s=0.2)
    result = await call(agent, [Pause(0.05)], settle=0.5)  # settle > gap: the greeting is heard out
    assert result.ok, result.errors
    assert result.underruns == 1
    assert result.heard_bytes == 20 * 160
    # a gap between utterances (after the mark) is not an underrun
    agent2 = FakeAgent(greeting_frames=10, reply_frames=10, silence_frames_to_reply=10)
    result2 = await call(agent2, [Say(audio=tone(0.1)), WaitForReply(3)], settle=0.1)
    assert result2.ok and result2.underruns == 0


async def test_malformed_server_messages_are_counted_and_call_continues() -> None:
    agent = FakeAgent(greeting_frames=5, junk_after_greeting="this is not json")
    result = await call(agent, [Say(audio=tone(0.2)), WaitForReply(3)], settle=0.1)
    assert result.ok, result.errors
    assert result.violations == {"not_json": 1}
    assert result.turns[0].reply_first_frame_ms is not None


async def test_signature_on_upgrade() -> None:
    agent = FakeAgent(greeting_frames=3, auth_token="s3cret")
    ok = await call(agent, [Pause(0.05)], auth_token="s3cret", settle=0.05)
    assert ok.ok, ok.errors
    assert agent.rejected == 0 and agent.stopped
    agent_bad = FakeAgent(greeting_frames=3, auth_token="s3cret")
    bad = await call(agent_bad, [Pause(0.05)], auth_token="wrong", settle=0.05)
    assert not bad.ok and not bad.connected
    assert agent_bad.rejected == 1
    assert any("403" in e for e in bad.errors)


async def test_server_hangup_and_no_reply_are_reported() -> None:
    async def hang_up(request) -> None:
        ws = await request.accept()
        await ws.get_message()  # connected
        await ws.aclose()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, hang_up, "127.0.0.1", 0, None)
        result = await SimulatedCaller(
            f"ws://127.0.0.1:{server.port}/", [Pause(5)], wait_greeting=False, call_timeout=10
        ).run()
        nursery.cancel_scope.cancel()
    assert result.connected and result.closed_by_server
    assert result.duration_ms < 3000

    agent = FakeAgent(greeting_frames=0, silence_frames_to_reply=10_000)  # never replies
    silent = await call(agent, [Say(audio=tone(0.05)), WaitForReply(timeout=0.3)], wait_greeting=False)
    assert silent.connected and not silent.ok  # agent never replies within 0.3 s of a 50 ms line
    assert len(agent.media) > 0


async def test_connection_refused_is_an_error_not_an_exception() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await SimulatedCaller(f"ws://127.0.0.1:{port}/", [Pause(0.1)], connect_timeout=2).run()
    assert not result.connected and result.errors


async def test_generic_stream_path_runs_the_same_call() -> None:
    """The ``wss://`` path (queued writes, flusher task) over plain TCP: same behaviour."""
    agent = FakeAgent(greeting_frames=10, reply_frames=15, silence_frames_to_reply=8)
    async with serving(agent) as url:
        caller = SimulatedCaller(url, [Say(audio=tone(0.3)), WaitForReply(3), PressKey("7")], settle=0.15,
                                 call_timeout=20.0)
        caller._use_stream_conn = True
        result = await caller.run()
    assert result.ok, result.errors
    assert agent.stopped and agent.dtmf == ["7"] and agent.violations == {}
    assert [name for name, _ in result.marks_echoed] == ["greeting", "reply-1"]
    chunks = [m.chunk for _, m in agent.media]
    assert chunks == list(range(1, len(chunks) + 1))
    assert result.turns[0].reply_latency_ms is not None


async def test_ping_answered_and_close_handshake_after_stop() -> None:
    """The server's ping gets a pong mid-call; after ``stop`` the caller sends Close
    (1000) and waits for the server's reply before closing the socket."""
    seen: dict[str, object] = {}

    async def handler(request) -> None:
        ws = await request.accept()
        stream = TwilioStream()
        with trio.fail_after(5):
            while True:
                for ev in stream.receive(await ws.get_message()):
                    if isinstance(ev, Media) and "pong" not in seen:
                        await ws.ping(b"are-you-there")  # returns when the pong arrived
                        seen["pong"] = True
                    if isinstance(ev, Stop):
                        seen["stop"] = True
                try:
                    if seen.get("stop"):
                        await ws.get_message()  # nothing more: the caller's Close ends this
                except ConnectionClosed as exc:
                    seen["close_code"] = exc.reason.code
                    handler_done.set()
                    return

    handler_done = trio.Event()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        result = await SimulatedCaller(
            f"ws://127.0.0.1:{server.port}/", [Pause(0.2)], wait_greeting=False, call_timeout=10
        ).run()
        with trio.move_on_after(2):
            await handler_done.wait()
        nursery.cancel_scope.cancel()
    assert result.ok, result.errors
    assert not result.closed_by_server
    assert seen == {"pong": True, "stop": True, "close_code": 1000}


async def test_oversized_engine_message_ends_the_call_with_an_error() -> None:
    async def handler(request) -> None:
        ws = await request.accept()
        await ws.get_message()  # connected
        await ws.send_message("x" * (2 * 1024 * 1024))
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.get_message()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        result = await SimulatedCaller(
            f"ws://127.0.0.1:{server.port}/", [Pause(5)], wait_greeting=False, call_timeout=10
        ).run()
        nursery.cancel_scope.cancel()
    assert result.connected and not result.ok
    assert any("over 1048576 bytes" in e for e in result.errors), result.errors
    assert result.duration_ms < 3000


async def test_socket_writes_queue_in_order_when_the_kernel_buffer_is_full() -> None:
    from callsim.websocket import SocketConn

    a, b = socket.socketpair()
    conn = SocketConn(a)
    peer = trio.socket.from_stdlib_socket(b)
    chunks = [bytes([i % 256]) * 65536 for i in range(64)]  # 4 MiB: more than the socket buffers
    for chunk in chunks:
        conn.write(chunk)  # never blocks
    assert conn._backlog  # the kernel did not take it all
    received = bytearray()

    async def read_all() -> None:
        while len(received) < 64 * 65536 + 4:
            received.extend(await peer.recv(1 << 20))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            nursery.start_soon(conn.flush_forever)
            while len(received) < 64 * 65536:
                await trio.sleep(0.01)
            conn.write(b"tail")  # after the backlog drained: straight to the socket
            while len(received) < 64 * 65536 + 4:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert bytes(received) == b"".join(chunks) + b"tail"
    await conn.aclose()
    peer.close()
    conn.write(b"after close")  # dropped, not raised
    assert conn.broken


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70001])
def test_masked_text_frames_decode_as_the_server_sees_them(size: int) -> None:
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import TextMessage

    from callsim.websocket import masked_text_frame

    text = ("é{\"x\":1}" * size)[:size]
    frame = masked_text_frame(text)
    assert frame[0] == 0x81 and frame[1] & 0x80  # FIN + text, masked
    server = Connection(ConnectionType.SERVER)  # rejects unmasked client frames
    server.receive_data(frame)
    events = list(server.events())
    assert len(events) == 1 and isinstance(events[0], TextMessage)
    assert events[0].data == text and events[0].message_finished
    assert masked_text_frame(text) != frame  # a fresh masking key per frame


def test_line_frames_are_measured_once_per_line() -> None:
    from callsim.playback import line_frames

    line = b"\xff" * 800 + tone(0.3) + b"\xff" * 800
    frames_, first, last = line_frames(line)
    assert len(frames_) == len(line) // 160 and (first, last) == (5, 19)
    assert line_frames(line) is line_frames(line)
    assert line_frames(b"\xff" * 320)[1:] == (0, 1)  # nothing voiced: the whole line


def test_script_validation() -> None:
    with pytest.raises(ValueError):
        Say()
    with pytest.raises(ValueError):
        Say(text="hi", audio=b"\xff")
    with pytest.raises(ValueError):
        BargeIn()
    with pytest.raises(ValueError):
        SimulatedCaller("http://example.invalid/", [])
    with pytest.raises(ValueError):
        SimulatedCaller("ws://127.0.0.1:1/", ["not a step"])  # type: ignore[list-item]
    for bad_url in ("ws://", "ws://:80/", "ws://127.0.0.1:port/", "wss://127.0.0.1:99999/"):
        with pytest.raises(ValueError):
            SimulatedCaller(bad_url, [])


# ------------------------------------------------------------------ callsim.voice (espeak-ng)


def test_synthesize_line_is_8khz_mulaw_speech() -> None:
    audio = synthesize_line("Hello, I would like to book a table for two.")
    assert 1.5 < len(audio) / 8000 < 5.0  # a few seconds of 8 kHz μ-law
    assert sum(f != SILENCE for f in frames(audio)) > 40  # mostly not silence
    assert synthesize_line("Hello, I would like to book a table for two.") is audio  # cached
    with pytest.raises(ValueError):
        synthesize_line("   ")
    from callsim.voice import VoiceUnavailable

    with pytest.raises(VoiceUnavailable, match="voice"):
        synthesize_line("hello", voice="xx-no-such-voice")


async def test_say_text_through_espeak() -> None:
    agent = FakeAgent(greeting_frames=0, silence_frames_to_reply=10)
    result = await call(agent, [Say(text="Yes please."), WaitForReply(3)], wait_greeting=False, settle=0.1)
    assert result.ok, result.errors
    line = synthesize_line("Yes please.")
    sent = b"".join(m.payload for _, m in agent.media)
    assert line.rstrip(b"\xff") in sent  # the synthesized line went out, frame-aligned
    turn = result.turns[0]
    assert turn.label == "Yes please."
    # speech end is the last voiced frame, not the clip's trailing silence
    voiced_ms = len(line.rstrip(b"\xff")) / 8
    assert turn.speech_end_ms - turn.speech_start_ms == pytest.approx(voiced_ms, abs=40)
    assert turn.reply_latency_ms is not None and 150 <= turn.reply_latency_ms <= 700

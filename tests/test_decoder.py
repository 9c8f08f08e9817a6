"""The decoder's outputs and their timing: a real ``Decoder`` (real silero VAD on
espeak-ng speech) under a real ``Supervisor``, with recording siblings in the
stt, planner and pacer slots, inline and through the mailbox.

Trio's ``MockClock(autojump_threshold=0)`` (the ``autojump_clock`` fixture) runs
the tree and frames are stamped with ``trio.current_time()``, so "the end is sent
by the frame that reaches silence start + hangover" is exact and the test costs
no wall time.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from actors.decoder import Decoder
from engine.actor import TrioActor
from engine import audio as engine_audio
from engine.audio import frames, ulaw_encode
from engine.audio_history import AudioHistory
from engine.messages import AudioChunk, CallerFrame, SpeechEnded, SpeechStarted, UtteranceEnded
from engine.providers.vad import VoiceActivityDetector
from engine.supervisor import ChildSpec, Supervisor, run_root
from tests.test_vad import FRAME, RATE, silence, speak

HANGOVER_S = 0.4  # longer than silero's lag, so a silence is seen beginning before it is due


class Recorder(TrioActor):
    """A sibling slot that records (trio time, message), inline: at the moment it is sent."""

    inline = True

    def __init__(self, got: list[tuple[float, Any]]) -> None:
        super().__init__()
        self.got = got

    def receive_inline(self, msg: Any) -> None:
        self.got.append((trio.current_time(), msg))


class Call:
    """A decoder tree: stt, planner and pacer recorders, then the decoder."""

    def __init__(self, *, inline: bool) -> None:
        self.vad = VoiceActivityDetector(hangover_ms=int(HANGOVER_S * 1000))
        self.history = AudioHistory()
        self.stt: list[tuple[float, Any]] = []
        self.planner: list[tuple[float, Any]] = []
        self.pacer: list[tuple[float, Any]] = []
        self.fed = 0
        self.last_t = 0.0

        def decoder(ctx: Any) -> Decoder:
            d = Decoder(self.vad, self.history, batch_ms=60)
            d.inline = inline
            return d

        self.sup = Supervisor(
            "call",
            [
                ChildSpec("stt", lambda ctx: Recorder(self.stt)),
                ChildSpec("planner", lambda ctx: Recorder(self.planner)),
                ChildSpec("pacer", lambda ctx: Recorder(self.pacer)),
                ChildSpec("decoder", decoder),
            ],
        )

    async def send(self, pcm: bytes) -> None:
        """Send ``pcm`` as real-time 20 ms μ-law frames (one per 20 ms of trio time)."""
        for f in frames(ulaw_encode(pcm), FRAME):
            await self.frame(f)

    async def frame(self, mulaw: bytes) -> None:
        await trio.sleep(FRAME / RATE)
        self.last_t = trio.current_time()
        self.sup.tell_role("decoder", CallerFrame(mulaw=mulaw, t=self.last_t))
        self.fed += 1
        await trio.testing.wait_all_tasks_blocked()  # a queued frame (mailbox mode) is handled before we look

    async def until_silence_begins(self, max_s: float = 1.0) -> None:
        """Silence frames until the VAD has begun a silence in speech; then no more."""
        quiet = ulaw_encode(silence(FRAME / RATE))
        for _ in range(int(max_s * RATE / FRAME)):
            await self.frame(quiet)
            if self.vad.in_speech and self.vad.end_due is not None:
                return
        raise AssertionError("no silence began")

    def of(self, got: list[tuple[float, Any]], kind: type) -> list[tuple[float, Any]]:
        return [(t, m) for t, m in got if isinstance(m, kind)]


@pytest.fixture(scope="module")
def line() -> bytes:
    return speak("I need a plumber for a leaking pipe")


@pytest.mark.parametrize("inline", [True, False])
async def test_speech_ended_is_sent_by_the_frame_that_reaches_the_due_time(
    autojump_clock: Any, line: bytes, inline: bool
) -> None:
    call = Call(inline=inline)
    async with trio.open_nursery() as n:
        await n.start(run_root, call.sup)
        await call.send(silence(0.4) + line[: len(line) // (FRAME * 2) * FRAME * 2])
        await call.until_silence_begins()
        due = call.vad.end_due
        assert due is not None
        assert due > call.last_t + FRAME / RATE  # more frames are needed
        quiet = ulaw_encode(silence(FRAME / RATE))
        while not call.of(call.planner, SpeechEnded):
            await call.frame(quiet)
            assert call.last_t < due + 1.0
        assert not call.vad.in_speech

        assert [type(m) for _, m in call.planner] == [SpeechStarted, SpeechEnded]
        (t_sent, ev), = call.of(call.planner, SpeechEnded)
        assert ev.t == pytest.approx(due - HANGOVER_S, abs=1e-9)
        assert 0 <= t_sent - due < FRAME / RATE  # the first frame at/after due
        assert abs(ev.t - (0.4 + len(line) / 2 / RATE)) <= 0.1  # and where the speech ended
        assert [type(m) for _, m in call.pacer] == [SpeechStarted]

        # The STT got every frame's audio, then the utterance end, in seq order.
        stt = [m for _, m in call.stt]
        assert isinstance(stt[-1], UtteranceEnded) and stt[-1].t == ev.t
        chunks = [m for m in stt if isinstance(m, AudioChunk)]
        assert sum(len(c.pcm16) for c in chunks) == call.fed * FRAME * 2
        seqs = [m.seq for m in stt if isinstance(m, (AudioChunk, UtteranceEnded))]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert chunks[-1].t == call.last_t
        assert call.history.pending()[-1] == stt[-1]
        call.sup.request_stop()


async def test_speech_that_resumes_before_the_hangover_is_one_turn(autojump_clock: Any, line: bytes) -> None:
    call = Call(inline=True)
    async with trio.open_nursery() as n:
        await n.start(run_root, call.sup)
        whole = line[: len(line) // (FRAME * 2) * FRAME * 2]
        await call.send(silence(0.4) + whole)
        await call.until_silence_begins()
        first_due = call.vad.end_due
        assert first_due is not None
        await call.send(whole)  # the caller goes on before the hangover is over
        assert call.last_t > first_due
        assert call.of(call.planner, SpeechEnded) == []
        await call.send(silence(1.0))
        assert [type(m) for _, m in call.planner] == [SpeechStarted, SpeechEnded]
        (t_sent, ev), = call.of(call.planner, SpeechEnded)
        assert ev.t > first_due  # the end of the second stretch, not the first
        call.sup.request_stop()


class RecordingBatchStt:
    """A batch recognizer (the ``SpeechToText`` protocol, ``streaming=False``, as
    whisper) that records the audio pushed to it, in order."""

    name = "recording"
    streaming = False

    def __init__(self) -> None:
        self.pushed: list[bytes] = []
        self.ended = 0

    def open_session(self, **kw: Any) -> "RecordingBatchStt":
        return self

    def push_audio(self, pcm16: bytes) -> None:
        self.pushed.append(pcm16)

    def end_utterance(self) -> None:
        self.ended += 1

    def close(self) -> None:
        pass


@pytest.mark.parametrize("batch_ms", [60, 100])
async def test_a_batch_recognizer_gets_the_pre_roll_then_the_speech_in_order(line: bytes, batch_ms: int) -> None:
    """The decoder sends the chunk that holds the speech detection before
    SpeechStarted; the recognizer must still hear the pre-roll first, then the
    speech, as one contiguous stretch of the caller's audio (a pre-roll played
    after the onset garbled the first word: "When do you open" -> "and do your open")."""
    from actors.stt import SttActor

    provider = RecordingBatchStt()
    history = AudioHistory()
    vad = VoiceActivityDetector(hangover_ms=200)
    others: list[tuple[float, Any]] = []
    sup = Supervisor(
        "call",
        [
            ChildSpec("stt", lambda ctx: SttActor.start(ctx, provider, history, language="en")),
            ChildSpec("planner", lambda ctx: Recorder(others)),
            ChildSpec("pacer", lambda ctx: Recorder(others)),
            ChildSpec("decoder", lambda ctx: Decoder(vad, history, batch_ms=batch_ms)),
        ],
    )
    whole = line[: len(line) // (FRAME * 2) * FRAME * 2]
    audio = silence(1.0) + whole + silence(0.6)
    mulaw = ulaw_encode(audio)
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        for i, f in enumerate(frames(mulaw, FRAME)):
            sup.tell_role("decoder", CallerFrame(mulaw=f, t=(i + 1) * FRAME / RATE))
        with trio.fail_after(10):
            while provider.ended == 0:
                await trio.sleep(0.01)
        sup.request_stop()
    heard = b"".join(provider.pushed)
    decoded = b"".join(engine_audio.ulaw_decode(f) for f in frames(mulaw, FRAME))
    start = decoded.find(heard)
    assert start >= 0, "the recognizer's audio is not one contiguous stretch of the caller's"
    speech_at = len(silence(1.0))
    assert 0 < speech_at - start  # audio from before the line began (the pre-roll)
    assert len(heard) - (len(whole) + (speech_at - start)) <= 0.6 * RATE * 2  # not the whole silence
    assert start + len(heard) >= speech_at + len(whole)  # and all of the speech

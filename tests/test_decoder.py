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
from engine.vad import VoiceActivityDetector
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
        assert call.pacer == []  # barge-in is the planner's decision (ClearPlayback), not the decoder's

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


def _batch_tree(vad: VoiceActivityDetector, batch_ms: int) -> tuple[RecordingBatchStt, Supervisor]:
    """A call tree of a real Decoder (with ``vad``) and SttActor feeding a recording
    batch recognizer, the planner and pacer recording siblings."""
    from actors.stt import SttActor

    provider = RecordingBatchStt()
    history = AudioHistory()
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
    return provider, sup


async def _play_one_utterance(sup: Supervisor, provider: RecordingBatchStt, mulaw: bytes) -> None:
    """Runs ``sup``, feeds it the caller's ``mulaw`` frame by frame and stops it once
    the recognizer has been told the utterance ended (failing after 10 s)."""
    async with trio.open_nursery() as n:
        await n.start(run_root, sup)
        for i, f in enumerate(frames(mulaw, FRAME)):
            sup.tell_role("decoder", CallerFrame(mulaw=f, t=(i + 1) * FRAME / RATE))
        with trio.fail_after(10):
            while provider.ended == 0:
                await trio.sleep(0.01)
        sup.request_stop()


@pytest.mark.parametrize("batch_ms", [60, 100])
async def test_a_batch_recognizer_gets_the_pre_roll_then_the_speech_in_order(line: bytes, batch_ms: int) -> None:
    """The decoder sends the chunk that holds the speech detection before
    SpeechStarted; the recognizer must still hear the pre-roll first, then the
    speech, as one contiguous stretch of the caller's audio (a pre-roll played
    after the onset garbled the first word: "When do you open" -> "and do your open")."""
    provider, sup = _batch_tree(VoiceActivityDetector(hangover_ms=200), batch_ms)
    whole = line[: len(line) // (FRAME * 2) * FRAME * 2]
    audio = silence(1.0) + whole + silence(0.6)
    mulaw = ulaw_encode(audio)
    await _play_one_utterance(sup, provider, mulaw)
    heard = b"".join(provider.pushed)
    decoded = b"".join(engine_audio.ulaw_decode(f) for f in frames(mulaw, FRAME))
    start = decoded.find(heard)
    assert start >= 0, "the recognizer's audio is not one contiguous stretch of the caller's"
    speech_at = len(silence(1.0))
    assert 0 < speech_at - start  # audio from before the line began (the pre-roll)
    assert len(heard) - (len(whole) + (speech_at - start)) <= 0.6 * RATE * 2  # not the whole silence
    assert start + len(heard) >= speech_at + len(whole)  # and all of the speech


#: Real recorded prompts (Debian's asterisk-core-sounds-en-wav, installed by
#: scripts/ensure-system.sh) whose onset the VAD decides late: 330-540 ms after the
#: speech began, 20 dB below the level recorded (bench/vad_onsets.py measures all).
SOUNDS = "/usr/share/asterisk/sounds/en_US_f_Allison"
SOFT_ONSETS = ("activated", "agent-user", "dir-pls-enter", "tt-weasels", "check-number-dial-again", "sorry")


def _run_batch_tree(audio: bytes, batch_ms: int = 100) -> tuple[bytes, bytes]:
    """The caller's ``audio`` through a real Decoder and SttActor into a recording
    batch recognizer: (what the recognizer heard, the decoded caller audio)."""
    provider, sup = _batch_tree(VoiceActivityDetector(), batch_ms)
    mulaw = ulaw_encode(audio)
    trio.run(_play_one_utterance, sup, provider, mulaw)
    decoded = b"".join(engine_audio.ulaw_decode(f) for f in frames(mulaw, FRAME))
    return b"".join(provider.pushed), decoded


@pytest.mark.parametrize("name", SOFT_ONSETS)
def test_a_batch_recognizer_hears_real_speech_from_its_onset(name: str) -> None:
    """No onset lost: the pre-roll covers the VAD's decision delay on real speech
    (a 300 ms pre-roll lost the start of these prompts: "hey josh could have
    finished it" -> "Finish it")."""
    import os

    import numpy as np

    from bench.vad_onsets import load, true_onset

    path = os.path.join(SOUNDS, name + ".wav")
    assert os.path.exists(path), f"{path} missing: run scripts/ensure-system.sh (asterisk-core-sounds-en-wav)"
    x = load(path) * 10 ** (-20 / 20)
    onset = true_onset(load(path))
    assert onset is not None
    lead = 1.0
    audio = np.concatenate([np.zeros(int(lead * RATE)), x, np.zeros(int(0.8 * RATE))])
    heard, decoded = _run_batch_tree(np.clip(audio, -32768, 32767).astype("<i2").tobytes())
    start = decoded.find(heard)
    assert start >= 0, "the recognizer's audio is not one contiguous stretch of the caller's"
    onset_byte = int((lead + onset) * RATE) * 2
    assert start <= onset_byte - int(0.02 * RATE) * 2, f"onset lost: heard from {start / 2 / RATE:.3f} s, speech at {lead + onset:.3f} s"


# ---------------------------------------------------------------- echo


def _echo_call(agent: "np.ndarray", inbound: "np.ndarray") -> tuple[list[Any], list[Any]]:
    """A real Decoder with an echo gate: the agent's ``agent`` audio is noted as
    sent (one frame per caller frame, as the pacer does in real time) while the
    caller's ``inbound`` arrives. Returns (planner messages, stt messages)."""
    import numpy as np

    from engine.echo import EchoReference

    echo = EchoReference()
    planner: list[tuple[float, Any]] = []
    stt: list[tuple[float, Any]] = []
    sup = Supervisor(
        "call",
        [
            ChildSpec("stt", lambda ctx: Recorder(stt)),
            ChildSpec("planner", lambda ctx: Recorder(planner)),
            ChildSpec("pacer", lambda ctx: Recorder([])),
            ChildSpec("decoder", lambda ctx: Decoder(VoiceActivityDetector(), AudioHistory(), batch_ms=100, echo=echo)),
        ],
    )
    out = frames(ulaw_encode(np.clip(agent, -32768, 32767).astype("<i2").tobytes()), FRAME)
    inb = frames(ulaw_encode(np.clip(inbound, -32768, 32767).astype("<i2").tobytes()), FRAME)

    async def main() -> None:
        async with trio.open_nursery() as n:
            await n.start(run_root, sup)
            for i, f in enumerate(inb):
                if i < len(out):
                    echo.note(out[i])
                sup.tell_role("decoder", CallerFrame(mulaw=f, t=(i + 1) * FRAME / RATE))
            await trio.testing.wait_all_tasks_blocked()
            sup.request_stop()

    trio.run(main)
    return [m for _, m in planner], [m for _, m in stt]


def _prompts(*names: str) -> "np.ndarray":
    import numpy as np

    from bench.vad_onsets import load

    return np.concatenate([load(f"{SOUNDS}/{n}.wav") for n in names])


@pytest.mark.parametrize("echo_db, delay_ms", [(-10, 120), (-15, 180), (-20, 250)])
def test_the_agents_voice_coming_back_is_not_the_callers(echo_db: int, delay_ms: int) -> None:
    """Real recorded speech as the agent's voice; the line returns it attenuated and
    delayed. Without a gate the VAD hears speech (the agent would interrupt itself
    and answer its own words); with it, the planner is told it may be echo, and the
    recognizer gets no speech at all."""
    import numpy as np

    from engine.messages import SpeechConfirmed

    agent = _prompts("agent-newlocation", "queue-reporthold", "tt-weasels")
    d = int(delay_ms * RATE / 1000)
    inbound = np.zeros(agent.size + RATE)
    inbound[d : d + agent.size] += agent * 10 ** (echo_db / 20)
    inbound += np.random.default_rng(0).normal(0, 3, inbound.size)
    planner, stt = _echo_call(agent, inbound)
    starts = [m for m in planner if isinstance(m, SpeechStarted)]
    assert starts and all(m.echo for m in starts), planner  # the VAD heard it...
    assert not [m for m in planner if isinstance(m, SpeechConfirmed)]  # ...but it is not the caller
    assert all(m.echo for m in planner if isinstance(m, SpeechEnded))
    assert not [m for m in stt if isinstance(m, (SpeechStarted, UtteranceEnded))]
    assert not [m for m in stt if isinstance(m, AudioChunk) and m.in_speech]
    # All the audio still reaches the recognizer (a streaming one hears everything),
    # but for the last batch, not yet complete.
    sent = sum(len(m.pcm16) for m in stt if isinstance(m, AudioChunk))
    assert 0 <= -(-inbound.size // FRAME) * FRAME * 2 - sent < 100 * 16


@pytest.mark.parametrize("caller_db", [0, -6])
def test_the_caller_talking_over_the_agents_echo_is_confirmed_with_its_onset(caller_db: int) -> None:
    import numpy as np

    from engine.messages import SpeechConfirmed

    agent = _prompts("agent-newlocation", "queue-reporthold", "tt-weasels", "dir-pls-enter")
    caller = _prompts("check-number-dial-again") * 10 ** (caller_db / 20)
    d = int(0.15 * RATE)
    inbound = np.zeros(agent.size + RATE)
    inbound[d : d + agent.size] += agent * 10 ** (-15 / 20)
    at = int(4.0 * RATE)
    inbound[at : at + caller.size] += caller
    planner, stt = _echo_call(agent, inbound)
    (confirmed,) = [m for m in planner if isinstance(m, SpeechConfirmed)]
    assert 4.0 - 0.05 <= confirmed.t <= 4.0 + 0.15  # the caller's own start, not the echo's
    # The recognizer's utterance starts where the caller's voice did; the audio
    # before it went out just before, as non-speech: a batch recognizer's pre-roll.
    from actors.stt import PREROLL_BYTES

    (i,) = [k for k, m in enumerate(stt) if isinstance(m, SpeechStarted)]
    assert stt[i].t == confirmed.t
    first_speech = next(m for m in stt[i:] if isinstance(m, AudioChunk) and m.in_speech)
    assert first_speech.t - len(first_speech.pcm16) / 2 / RATE <= confirmed.t
    before = stt[i - 1]
    assert isinstance(before, AudioChunk) and not before.in_speech
    assert first_speech.seq == before.seq + 1  # contiguous, in order
    assert confirmed.t - 4.0 < PREROLL_BYTES / 16 / 1000

"""The planner actor as glue: a real ``Planner`` under a real ``Supervisor``, fed
the decoder's and the recognizer's messages in the order and at the pace a call
produces them, with recording siblings; what it records is checked. (The
decisions themselves are tested event by event in tests/test_turn_taking.py.)"""

from __future__ import annotations

import time
from typing import Any, Iterator

import trio
import trio.testing

from actors.planner import Planner, TurnSettings
from engine.actor import TrioActor
from engine.messages import (
    ClearPlayback,
    RecordTurn,
    ReplyStamp,
    Speak,
    SpeechEnded,
    SpeechStarted,
    TextDelta,
    Transcript,
)
from engine.supervisor import ChildSpec, Supervisor, run_root


class Recorder(TrioActor):
    inline = True

    def __init__(self, got: list[Any]) -> None:
        super().__init__()
        self.got = got

    def receive_inline(self, msg: Any) -> None:
        self.got.append(msg)


class Conversation:
    """A language planner that answers every turn with one sentence."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.committed: list[str] = []

    def reply(self, text: str, cancel: Any = None) -> Iterator[Any]:
        self.asked.append(text)
        yield TextDelta("Okay.")

    def commit(self, user: str, reply: str, interrupted: bool = False) -> None:
        self.committed.append(user)


def _planner_spec(call: Call, *, streaming_stt: bool = False) -> ChildSpec:
    """The real planner of ``call``: its conversation, recording into its records."""
    return ChildSpec(
        "planner",
        lambda ctx: Planner(
            conversation=call.conv,
            call_sid="CA1",
            business_id="demo",
            language="en-US",
            voice="",
            connected_at=time.monotonic(),
            record=call.records.append,
            limiter=trio.CapacityLimiter(4),
            settings=TurnSettings(),
            streaming_stt=streaming_stt,
            call_stamps={},
        ),
    )


class Call:
    def __init__(self, *, streaming_stt: bool = False) -> None:
        self.records: list[Any] = []
        self.tts: list[Any] = []
        self.pacer: list[Any] = []
        self.conv = Conversation()
        self.sup = Supervisor(
            "call",
            [
                ChildSpec("transport", lambda ctx: Recorder([])),
                ChildSpec("pacer", lambda ctx: Recorder(self.pacer)),
                ChildSpec("tts", lambda ctx: Recorder(self.tts)),
                ChildSpec("stt", lambda ctx: Recorder([])),
                _planner_spec(self, streaming_stt=streaming_stt),
            ],
        )

    def tell(self, msg: Any) -> None:
        self.sup.tell_role("planner", msg)

    def turns(self) -> list[RecordTurn]:
        return [r for r in self.records if isinstance(r, RecordTurn)]


async def test_a_hesitation_the_caller_goes_on_after_is_one_turn_with_every_word() -> None:
    """"uh, i i still think it's a very good team though": the VAD ends "uh," at the
    pause; the batch recognizer's final for it arrives while the caller says the
    rest. The turn is answered once, and its record holds the whole utterance (the
    first part was lost: "Very good team though")."""
    call = Call()
    async with trio.open_nursery() as n:
        await n.start(run_root, call.sup)
        call.tell(SpeechStarted(t=time.monotonic()))
        await trio.sleep(0.3)
        call.tell(SpeechEnded(t=time.monotonic() - 0.2))
        await trio.sleep(0.3)
        call.tell(SpeechStarted(t=time.monotonic()))
        await trio.sleep(0.15)
        call.tell(Transcript("Uh,", True, time.monotonic()))
        await trio.sleep(0.8)
        call.tell(SpeechEnded(t=time.monotonic() - 0.2))
        await trio.sleep(0.4)
        call.tell(Transcript("I still think it's a very good team though.", True, time.monotonic()))
        await trio.sleep(0.3)
        await trio.testing.wait_all_tasks_blocked()
        call.sup.request_stop()
    (turn,) = call.turns()
    assert turn.transcript == "Uh, I still think it's a very good team though."
    assert call.conv.committed == ["Uh, I still think it's a very good team though."]


async def test_the_caller_going_on_before_hearing_the_reply_cancels_it_and_keeps_one_record() -> None:
    call = Call()
    async with trio.open_nursery() as n:
        await n.start(run_root, call.sup)
        call.tell(SpeechStarted(t=time.monotonic()))
        await trio.sleep(0.3)
        call.tell(SpeechEnded(t=time.monotonic() - 0.2))
        await trio.sleep(0.2)
        call.tell(Transcript("My name is David", True, time.monotonic()))
        await trio.sleep(0.05)
        first = [m for m in call.tts if isinstance(m, Speak)]
        assert first and first[0].text == "Okay."
        # The reply's first frame went out, and the caller goes on 200 ms later.
        call.tell(ReplyStamp(turn_id=first[0].turn_id, name="first_frame", t=time.monotonic()))
        await trio.sleep(0.2)
        call.tell(SpeechStarted(t=time.monotonic()))
        # The reply's audio is stopped, and what of it is still on its way dropped.
        assert ClearPlayback(t=call.pacer[0].t, turn_id=first[0].turn_id) in call.pacer
        assert all(isinstance(m, ClearPlayback) for m in call.pacer)
        assert first[0].cancel.cancelled
        await trio.sleep(0.5)
        call.tell(SpeechEnded(t=time.monotonic() - 0.2))
        await trio.sleep(0.2)
        call.tell(Transcript("Cohen.", True, time.monotonic()))
        await trio.sleep(0.2)
        await trio.testing.wait_all_tasks_blocked()
        call.sup.request_stop()
    (turn,) = call.turns()
    assert turn.transcript == "My name is David Cohen."
    assert call.conv.asked == ["My name is David", "My name is David Cohen."]
    assert call.conv.committed == ["My name is David Cohen."]


# ---------------------------------------------------------------- echo, end to end in the tree


def _echo_loop(*, gate: bool, echo_db: float = -12.0, delay_frames: int = 8) -> list[Any]:
    """A call tree with the real decoder, planner and pacer: the pacer plays a
    greeting of real recorded speech, and the line brings it back into the caller's
    audio ``echo_db`` down and ``delay_frames`` × 20 ms late (the caller says
    nothing). Returns what the transport was asked to send."""
    import numpy as np

    from actors.decoder import Decoder
    from actors.pacer import Pacer
    from bench.vad_onsets import load
    from engine.audio import frames, ulaw_decode, ulaw_encode
    from engine.audio_history import AudioHistory
    from engine.echo import EchoReference
    from engine.messages import CallerFrame, OutboundMedia
    from engine.vad import VoiceActivityDetector

    sounds = "/usr/share/asterisk/sounds/en_US_f_Allison"
    speech = np.concatenate([load(f"{sounds}/{n}.wav") for n in ("agent-newlocation", "queue-reporthold")])
    greeting = ulaw_encode(np.clip(speech, -32768, 32767).astype("<i2").tobytes())
    echo = EchoReference() if gate else None
    sent: list[Any] = []
    call = Call()
    call.sup = Supervisor(
        "call",
        [
            ChildSpec("transport", lambda ctx: Recorder(sent)),
            ChildSpec("pacer", lambda ctx: Pacer(greeting=greeting, echo=echo)),
            ChildSpec("tts", lambda ctx: Recorder([])),
            ChildSpec("stt", lambda ctx: Recorder([])),
            ChildSpec(
                "decoder", lambda ctx: Decoder(VoiceActivityDetector(), AudioHistory(), batch_ms=100, echo=echo)
            ),
            _planner_spec(call),
        ],
    )
    gain = 10 ** (echo_db / 20)
    n_frames = len(frames(greeting, 160)) + 50

    async def main() -> None:
        async with trio.open_nursery() as n:
            await n.start(run_root, call.sup)
            for i in range(n_frames):
                await trio.sleep(0.02)
                media = [m.mulaw for m in sent if isinstance(m, OutboundMedia)]
                k = i - delay_frames
                if 0 <= k < len(media):
                    x = np.frombuffer(ulaw_decode(media[k]), dtype="<i2").astype(np.float64) * gain
                else:
                    x = np.zeros(160)
                x = x + np.random.default_rng(i).normal(0, 3, 160)
                frame = ulaw_encode(np.clip(x, -32768, 32767).astype("<i2").tobytes())
                call.sup.tell_role("decoder", CallerFrame(mulaw=frame, t=trio.current_time()))
            call.sup.request_stop()

    # Trio's mock clock: the pacer's deadlines and this loop's 20 ms steps stay in
    # step however busy the machine is, so the echo's delay is the one asked for.
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return sent


def test_the_agents_own_voice_coming_back_does_not_interrupt_it() -> None:
    from engine.messages import OutboundClear, OutboundMedia

    sent = _echo_loop(gate=True)
    assert sum(isinstance(m, OutboundMedia) for m in sent) > 200  # the greeting played...
    assert not [m for m in sent if isinstance(m, OutboundClear)]  # ...to the end
    # Without the gate, the same line made the agent cut its own greeting.
    sent = _echo_loop(gate=False)
    assert [m for m in sent if isinstance(m, OutboundClear)]


def test_a_cancelled_replys_audio_is_never_played_even_when_it_arrives_late() -> None:
    """The caller went on before the reply was heard: the planner cancels it, but
    the TTS may already have sent a chunk. The pacer drops it (and clears the line
    if some of it was out), so the caller never hears a fragment of it."""
    from actors.pacer import Pacer
    from engine.messages import AgentAudio, OutboundClear, OutboundMedia

    sent: list[Any] = []
    sup = Supervisor(
        "call",
        [
            ChildSpec("transport", lambda ctx: Recorder(sent)),
            ChildSpec("planner", lambda ctx: Recorder([])),
            ChildSpec("pacer", lambda ctx: Pacer()),
        ],
    )

    async def main() -> None:
        async with trio.open_nursery() as n:
            await n.start(run_root, sup)
            sup.tell_role("pacer", ClearPlayback(t=1.0, turn_id=3))  # cancelled before any audio
            sup.tell_role("pacer", AgentAudio(turn_id=3, mulaw=b"\x00" * 1600, last=True))
            await trio.sleep(0.5)
            assert not [m for m in sent if isinstance(m, OutboundMedia)]
            sup.tell_role("pacer", AgentAudio(turn_id=4, mulaw=b"\x00" * 16000, last=False))
            await trio.sleep(0.1)
            assert [m for m in sent if isinstance(m, OutboundMedia)]
            sup.tell_role("pacer", ClearPlayback(t=2.0, turn_id=4))  # cancelled while playing
            await trio.testing.wait_all_tasks_blocked()
            assert [m for m in sent if isinstance(m, OutboundClear)]
            count = sum(isinstance(m, OutboundMedia) for m in sent)
            sup.tell_role("pacer", AgentAudio(turn_id=4, mulaw=b"\x00" * 1600, last=True))
            await trio.sleep(0.5)
            assert sum(isinstance(m, OutboundMedia) for m in sent) == count
            sup.request_stop()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

"""Google failover that makes progress: the real ``SttActor`` on the real Google client,
under a real ``Supervisor``, against the speech peer killing every stream after 3.5 s
of audio (``kill_after_audio_s``).

The feeder plays the decoder's part (``AudioHistory`` appends, ``AudioChunk`` /
``SpeechStarted`` / ``UtteranceEnded`` to the stt slot) at twice real time: a caller
silent through a 4 s greeting, then utterances with pauses. The fallback slot holds a
recording recognizer, so "the call stayed on the primary" is checked by what it heard.

Before this, each new stream replayed the audio since the last final, silence
included: after the greeting every new stream got more than 3.5 s of replay, died
during it, and the fourth such death handed the call to the fallback.
"""

from __future__ import annotations

from typing import Any, Callable

import trio

from actors.stt import PREROLL_BYTES, SttActor
from engine.actor import TrioActor
from engine.audio_history import AudioHistory
from engine.messages import AudioChunk, SpeechStarted, Transcript, UtteranceEnded
from engine.providers.google_stt import GoogleStt
from engine.supervisor import Backoff, ChildSpec, Supervisor, run_root
from tests.peers.speech_peer import SpeechPeer, utterance_pcm

RATE = 8000
CHUNK_MS = 100
SPEED = 2.0
LINES = [
    "I have a leaking pipe in the kitchen",
    "my name is David Cohen",
    "zero five four one two three",
    "do you have parking near the office",
    "tomorrow morning is fine",
]


class Planner(TrioActor):
    inline = True

    def __init__(self, got: list[Transcript]) -> None:
        super().__init__()
        self.got = got

    def receive_inline(self, msg: Any) -> None:
        if isinstance(msg, Transcript):
            self.got.append(msg)


class HeardNothingYet:
    """The fallback recognizer: records what reaches it (it must be nothing)."""

    name = "fallback"
    streaming = False

    def __init__(self) -> None:
        self.opened = 0
        self.pushed = 0

    def open_session(self, **kw: Any) -> "HeardNothingYet":
        self.opened += 1
        return self

    def push_audio(self, pcm16: bytes) -> None:
        self.pushed += len(pcm16)

    def end_utterance(self) -> None:
        pass

    def close(self) -> None:
        pass


def script(lines: int, lead_ms: int, speech_ms: int, gap_ms: int) -> list[tuple[bytes, bool, str]]:
    """(pcm, in_speech, event after it) per 100 ms chunk: the caller's side of the call."""
    step = RATE * 2 * CHUNK_MS // 1000
    out: list[tuple[bytes, bool, str]] = [(b"\0" * step, False, "")] * (lead_ms // CHUNK_MS)
    for k in range(lines):
        pcm = utterance_pcm(k, speech_ms)
        chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)]
        out += [(c, True, "start" if i == 0 else "") for i, c in enumerate(chunks)]
        quiet = [(b"\0" * step, False, "") for _ in range(gap_ms // CHUNK_MS)]
        quiet[1] = (quiet[1][0], False, "end")  # the VAD's end, 200 ms into the pause
        out += quiet
    return out


async def run_call(
    peer: SpeechPeer, make_stt: Callable[[], GoogleStt], *, lines: int = len(LINES), speed: float = SPEED
) -> dict[str, Any]:
    """One call under the shipped supervision numbers (3 retries, 0.2 s backoff,
    at most 10 restarts in 30 s)."""
    stt = make_stt()
    fallback = HeardNothingYet()
    history = AudioHistory(preroll_bytes=PREROLL_BYTES)
    got: list[Transcript] = []

    def slot(provider: Any) -> Callable[[Any], Any]:
        return lambda ctx: SttActor.start(ctx, provider, history, language="en-US")

    sup = Supervisor(
        "call",
        [
            ChildSpec("planner", lambda ctx: Planner(got)),
            ChildSpec(
                "stt", slot(stt), fallback=slot(fallback), max_retries=3,
                backoff=Backoff(base=0.2, max=5.0, jitter=0.1), probe_interval=1000.0, buffer=1024,
            ),
        ],
        intensity=10,
        period=30.0,
    )
    first_stream = peer.stream_count
    snaps: list[dict[str, Any]] = []
    try:
        async with trio.open_nursery() as n:
            await n.start(run_root, sup)
            for pcm, in_speech, event in script(lines, lead_ms=4000, speech_ms=1000, gap_ms=1500):
                await trio.sleep(CHUNK_MS / 1000 / speed)
                now = trio.current_time()
                chunk = AudioChunk(pcm16=pcm, t=now, in_speech=in_speech, seq=history.next_seq())
                history.append(chunk)
                sup.tell_role("stt", chunk)
                if event == "start":
                    sup.tell_role("stt", SpeechStarted(t=now))
                elif event == "end":
                    end = UtteranceEnded(t=now, seq=history.next_seq())
                    history.append(end)
                    sup.tell_role("stt", end)
                snaps.append(next(c for c in sup.snapshot()["children"] if c["role"] == "stt"))
            with trio.move_on_after(3):
                while len([t for t in got if t.is_final]) < lines:
                    await trio.sleep(0.02)
            sup.request_stop()
    finally:
        stt.close()
    with peer.lock:
        streams = peer.streams[first_stream:]
        audio_s = [sum(s.audio_sizes) / (2 * RATE) for s in streams]
        killed = sum(1 for s in streams if s.ended == "UNAVAILABLE")
    return {
        "finals": [t.text for t in got if t.is_final],
        "fallback_ever": any(s["fallback"] for s in snaps),
        "restarts": snaps[-1]["restarts"],
        "fallback_opened": fallback.opened,
        "fallback_heard": fallback.pushed,
        "streams": len(streams),
        "killed": killed,
        "audio_s_per_stream": audio_s,
    }


async def test_every_stream_killed_after_3_5_s_of_audio_stays_on_the_primary() -> None:
    with SpeechPeer(LINES, final_delay_s=0.05) as peer:
        peer.set_faults(kill_after_audio_s=3.5)
        r = await run_call(peer, lambda: GoogleStt(endpoint=peer.address, insecure=True))
    print(f"\nkill-after-3.5s-of-audio: {r}")
    # Every utterance transcribed exactly once, in order, by the primary.
    assert r["finals"] == LINES, r
    assert not r["fallback_ever"] and r["fallback_opened"] == 0 and r["fallback_heard"] == 0, r
    # The peer did kill streams through the call (the silence included) ...
    assert r["killed"] >= 4 and r["restarts"] >= 4, r
    # ... and no new stream was fed the greeting's silence: after the first, each
    # stream's replay is at most a pre-roll plus an unfinished utterance and its pause.
    assert all(s <= 3.5 + CHUNK_MS / 1000 for s in r["audio_s_per_stream"]), r
    call_s = (4000 + len(LINES) * 2500) / 1000
    assert sum(r["audio_s_per_stream"]) < call_s * 1.5, r  # replay overhead, not a loop


async def test_a_long_call_with_a_stream_killed_every_3_5_s_is_not_a_crash_loop() -> None:
    """Fourteen lines (39 s of audio, played at three times real time): more stream
    deaths than the call's restart intensity allows in 30 s. They came after progress,
    so they count neither toward the fallback nor toward the intensity: the call goes on
    on the primary (before, the tree gave up and the caller heard the apology)."""
    lines = 14
    script_lines = [f"line {k}" for k in range(lines)]
    with SpeechPeer(script_lines, final_delay_s=0.05) as peer:
        peer.set_faults(kill_after_audio_s=3.5)
        r = await run_call(peer, lambda: GoogleStt(endpoint=peer.address, insecure=True), lines=lines, speed=3.0)
    print(f"\nlong call: { {k: v for k, v in r.items() if k not in ('audio_s_per_stream', 'finals')} }")
    assert r["finals"] == script_lines, r
    assert r["restarts"] > 10 and not r["fallback_ever"], r


async def test_streams_refused_at_open_still_fall_back_after_the_retries() -> None:
    """A stream that cannot carry new audio counts: four refused opens, then the fallback."""
    with SpeechPeer(LINES, final_delay_s=0.05) as peer:
        peer.set_faults(fail_open=1_000_000)
        r = await run_call(peer, lambda: GoogleStt(endpoint=peer.address, insecure=True))
    assert r["streams"] == 4 and r["fallback_ever"] and r["fallback_opened"] == 1, r
    assert r["fallback_heard"] > 0 and r["finals"] == [], r

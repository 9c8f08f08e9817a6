"""GoogleStt through the real ``google-cloud-speech`` client against the local gRPC peer.

Audio is pushed faster than real time (``SPEED``) in 80 ms batches; the peer's "recognition"
is deterministic (see ``tests/peers/speech_peer.py``), so the exact finals are asserted.
Waiting for results uses a condition with a timeout, never a fixed sleep.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import grpc
import pytest
from google.api_core import exceptions as gexc

from engine.messages import Transcript
from engine.providers.google_stt import GoogleStt, GoogleSttSession
from tests.peers.speech_peer import SpeechPeer, utterance_pcm

RATE = 8000
SPEED = 4.0  # audio pushed this many times faster than real time
SCRIPT = [
    "shalom ani rotze lekabel hatzaat mechir",
    "yesh li nezila bamitbach",
    "ani gar betel aviv",
    "hashem sheli dana levi",
    "hamispar sheli efes chamesh efes",
    "matai atem yecholim lavo",
    "machar baboker ze beseder",
    "kama ze yaale",
    "toda raba",
    "lehitraot",
]


def silence(ms: int) -> bytes:
    return b"\x00\x00" * (RATE * ms // 1000)


class Collector:
    """Thread-safe sink for the session callbacks, with waiting."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.transcripts: list[Transcript] = []
        self.errors: list[BaseException] = []

    def on_transcript(self, t: Transcript) -> None:
        with self.cond:
            self.transcripts.append(t)
            self.cond.notify_all()

    def on_error(self, exc: BaseException) -> None:
        with self.cond:
            self.errors.append(exc)
            self.cond.notify_all()

    def wait(self, predicate: Callable[["Collector"], bool], timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self), timeout)

    @property
    def finals(self) -> list[str]:
        with self.cond:
            return [t.text for t in self.transcripts if t.is_final]


@pytest.fixture
def peer():
    with SpeechPeer(SCRIPT, final_delay_s=0.05) as p:
        yield p


@pytest.fixture
def stt(peer):
    provider = GoogleStt(endpoint=peer.address, insecure=True)
    yield provider
    provider.close()


def open_session(stt: GoogleStt, sink: Collector, *, language: str = "he-IL", hints=("plumber",)) -> GoogleSttSession:
    return stt.open_session(
        language=language, sample_rate=RATE, phrase_hints=list(hints),
        on_transcript=sink.on_transcript, on_error=sink.on_error,
    )


def push(session: GoogleSttSession, pcm: bytes, *, batch_ms: int = 80, speed: float = SPEED) -> None:
    step = RATE * 2 * batch_ms // 1000
    for i in range(0, len(pcm), step):
        session.push_audio(pcm[i : i + step])
        time.sleep(batch_ms / 1000 / speed)  # pacing the feed like a live call, not waiting for a result


def speak(session: GoogleSttSession, k: int, *, speech_ms: int = 800, gap_ms: int = 700, vad: bool = False) -> None:
    """Utterance ``k`` then a gap; with ``vad`` the VAD's end_utterance() after 200 ms of it."""
    push(session, utterance_pcm(k, speech_ms))
    push(session, silence(200))
    if vad:
        session.end_utterance()
    push(session, silence(gap_ms - 200))


def test_interim_then_final_for_each_utterance(peer, stt):
    sink = Collector()
    session = open_session(stt, sink)
    try:
        push(session, silence(200))
        for k in range(3):
            speak(session, k)
        assert sink.wait(lambda s: len(s.finals) == 3)
    finally:
        session.close()
    assert sink.errors == []
    assert sink.finals == SCRIPT[:3]
    for k in range(3):
        mine = [t for t in sink.transcripts if t.utterance == k]
        assert mine[-1].is_final and mine[-1].text == SCRIPT[k]
        interims = [t for t in mine if not t.is_final]
        assert len(interims) >= 2, "interim results come before the final"
        assert all(not t.is_final for t in mine[:-1])
        for t in interims:
            assert SCRIPT[k].startswith(t.text) and 0.0 < t.stability <= 1.0
        assert len(interims[0].text) < len(SCRIPT[k]), "interims grow word by word"


def test_config_sent_matches_the_call(peer, stt):
    sink = Collector()
    session = open_session(stt, sink, language="iw-IL", hints=("plumber", "boiler"))
    try:
        push(session, utterance_pcm(0, 400) + silence(500))
        assert sink.wait(lambda s: len(s.finals) == 1)
    finally:
        session.close()
    (cfg,) = peer.configs()
    assert cfg.language == "iw-IL"
    assert cfg.model == "phone_call" and cfg.use_enhanced is True
    assert cfg.sample_rate == 8000 and cfg.encoding == "LINEAR16"
    assert cfg.phrase_hints == ("plumber", "boiler")
    assert cfg.interim_results is True and cfg.single_utterance is False
    assert cfg.automatic_punctuation is True


def test_requests_are_batched_to_at_most_100ms_and_25kb(peer, stt):
    sink = Collector()
    session = open_session(stt, sink)
    big = utterance_pcm(0, 3000) + silence(600)  # 3.6 s pushed in one call
    try:
        session.push_audio(big)
        for _ in range(50):  # then many small pieces, which are coalesced
            session.push_audio(silence(10))
        assert sink.wait(lambda s: len(s.finals) == 1)
        session.push_audio(silence(100))
    finally:
        session.close()
    (stream,) = peer.streams
    assert sum(stream.audio_sizes) <= len(big) + 50 * 160 + 1600
    assert sum(stream.audio_sizes) >= len(big)
    assert max(stream.audio_sizes) <= 1600  # 100 ms of 8 kHz PCM16
    assert max(peer.request_sizes()) <= 25_000
    assert len(stream.audio_sizes) < len(big) // 1600 + 50, "small pushes were coalesced"


def test_unavailable_on_open_reports_exactly_one_error(peer, stt):
    peer.set_faults(fail_open=1)
    sink = Collector()
    session = open_session(stt, sink)
    try:
        assert sink.wait(lambda s: len(s.errors) >= 1)
        push(session, utterance_pcm(0, 400) + silence(500))  # ignored: the session is dead
        assert session.dead
    finally:
        session.close()
    assert len(sink.errors) == 1
    assert isinstance(sink.errors[0], gexc.ServiceUnavailable)
    assert sink.transcripts == []
    assert peer.stream_count == 1, "no retry of its own: the supervisor decides"


@pytest.mark.parametrize(
    "code, exc_type",
    [
        (grpc.StatusCode.UNAVAILABLE, gexc.ServiceUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, gexc.DeadlineExceeded),
        (grpc.StatusCode.INTERNAL, gexc.InternalServerError),
    ],
)
def test_mid_stream_abort_reports_exactly_one_error(peer, stt, code, exc_type):
    peer.set_faults(abort_after_requests=32, abort_code=code)
    sink = Collector()
    session = open_session(stt, sink)
    try:
        push(session, silence(200))
        speak(session, 0)  # 23 requests: its final arrives before the abort
        speak(session, 1)
        assert sink.wait(lambda s: len(s.errors) >= 1)
        push(session, utterance_pcm(2, 400))
    finally:
        session.close()
    assert len(sink.errors) == 1 and isinstance(sink.errors[0], exc_type)
    assert sink.finals == SCRIPT[:1]
    assert peer.streams[0].ended == code.name


def test_kill_and_stream_end_are_errors_too(peer, stt):
    peer.set_faults(kill_every_s=0.3)
    sink = Collector()
    session = open_session(stt, sink)
    try:
        push(session, silence(2000))
        assert sink.wait(lambda s: len(s.errors) >= 1)
    finally:
        session.close()
    assert len(sink.errors) == 1 and isinstance(sink.errors[0], gexc.ServiceUnavailable)


@pytest.mark.parametrize("vad", [True, False], ids=["rotate-at-end_utterance", "rotate-at-final"])
def test_rotation_finalizes_each_utterance_exactly_once(peer, vad):
    stt = GoogleStt(endpoint=peer.address, insecure=True, rotate_after_s=0.6, force_rotate_after_s=3.0)
    sink = Collector()
    session = open_session(stt, sink)
    try:
        push(session, silence(200))
        for k in range(len(SCRIPT)):  # 10 x 1.5 s = 15 s of call audio
            speak(session, k, vad=vad)
        assert sink.wait(lambda s: len(s.finals) >= len(SCRIPT))
        push(session, silence(600))  # anything doubled would show up now
    finally:
        session.close()
        stt.close()
    assert sink.errors == []
    assert sink.finals == SCRIPT, "each utterance finalized exactly once, in order"
    assert [t.utterance for t in sink.transcripts if t.is_final] == list(range(len(SCRIPT)))
    assert session.rotations >= 3
    assert peer.stream_count == session.rotations + 1 == stt.streams_opened
    assert len({(c.language, c.model, c.phrase_hints) for c in peer.configs()}) == 1
    pushed = RATE * 2 * (200 + len(SCRIPT) * 1500 + 600) // 1000
    received = sum(n for st in peer.streams for n in st.audio_sizes)
    assert received > pushed, "the audio after the last final was replayed into the new streams"
    if vad:  # rotated before the old stream's final: the whole utterance was replayed each time
        assert received - pushed >= session.rotations * len(utterance_pcm(0, 800))


def test_forced_rotation_mid_utterance_keeps_every_word(peer):
    # One long utterance and no boundary: the session must rotate before the peer's stream
    # limit (OUT_OF_RANGE at 1.2 s here, 305 s at Google), replaying the whole utterance.
    peer.set_faults(max_stream_s=1.2)
    stt = GoogleStt(endpoint=peer.address, insecure=True, rotate_after_s=0.4, force_rotate_after_s=0.8)
    sink = Collector()
    session = open_session(stt, sink)
    try:
        push(session, silence(100) + utterance_pcm(0, 3000) + silence(500), speed=1.5)
        assert sink.wait(lambda s: len(s.finals) >= 1 or bool(s.errors))
        push(session, silence(300), speed=1.5)
    finally:
        session.close()
        stt.close()
    assert sink.errors == []
    assert sink.finals == SCRIPT[:1]
    assert session.rotations >= 2
    assert all(s.ended != "OUT_OF_RANGE" for s in peer.streams)


def test_model_rejected_downgrades_once_per_language(peer, stt, caplog):
    peer.set_faults(reject_models={"he-IL": {"phone_call"}})
    caplog.set_level(logging.WARNING, logger="engine.providers.google_stt")
    sink1, sink2 = Collector(), Collector()
    first = open_session(stt, sink1)
    try:
        push(first, silence(200))
        speak(first, 0)
        assert sink1.wait(lambda s: len(s.finals) == 1)
    finally:
        first.close()
    second = open_session(stt, sink2)
    try:
        speak(second, 1)
        assert sink2.wait(lambda s: len(s.finals) == 1)
    finally:
        second.close()
    assert sink1.errors == [] and sink2.errors == []
    assert sink1.finals == SCRIPT[:1] and sink2.finals == SCRIPT[1:2], "no audio lost by the downgrade"
    assert [c.model for c in peer.configs()] == ["phone_call", "latest_long", "latest_long"]
    assert [c.use_enhanced for c in peer.configs()] == [True, False, False]
    assert stt.downgrades == 1 and first.downgrades == 1 and second.downgrades == 0
    assert stt.stats().working_models == {"he-IL": "latest_long"}
    assert len([r for r in caplog.records if "downgrad" in r.getMessage()]) == 1


def test_downgrade_falls_through_to_no_model(peer, stt):
    peer.set_faults(reject_models={"he-IL": {"phone_call", "latest_long"}})
    sink = Collector()
    session = open_session(stt, sink)
    try:
        speak(session, 0)
        assert sink.wait(lambda s: len(s.finals) == 1)
    finally:
        session.close()
    assert [c.model for c in peer.configs()] == ["phone_call", "latest_long", ""]
    assert sink.finals == SCRIPT[:1] and stt.downgrades == 2
    # Another language is not affected.
    sink_en = Collector()
    other = open_session(stt, sink_en, language="en-US")
    try:
        speak(other, 1)
        assert sink_en.wait(lambda s: len(s.finals) == 1)
    finally:
        other.close()
    assert peer.configs()[-1].model == "phone_call"


def test_slow_first_result_still_delivers(peer, stt):
    peer.set_faults(first_result_delay_s=0.8)
    sink = Collector()
    session = open_session(stt, sink)
    try:
        speak(session, 0)
        assert sink.wait(lambda s: len(s.finals) == 1)
    finally:
        session.close()
    assert sink.errors == [] and sink.finals == SCRIPT[:1]


def test_bad_input_and_close_semantics(peer, stt):
    with pytest.raises(ValueError):
        open_session(stt, Collector(), language="not a language")
    with pytest.raises(ValueError):
        stt.open_session(language="he-IL", sample_rate=3, phrase_hints=[],
                         on_transcript=lambda t: None, on_error=lambda e: None)
    sink = Collector()
    session = open_session(stt, sink)
    with pytest.raises(ValueError):
        session.push_audio(b"\x00\x01\x02")
    with pytest.raises(ValueError):
        session.push_audio("text")  # type: ignore[arg-type]
    push(session, utterance_pcm(0, 300))
    started = time.monotonic()
    session.close()
    session.close()  # idempotent
    assert time.monotonic() - started < 2.5
    count = len(sink.transcripts)
    session.push_audio(silence(100))  # after close: dropped, no error
    session.end_utterance()
    assert len(sink.transcripts) == count and sink.errors == []


def test_peer_speaks_mulaw_to_the_public_client_helper(peer):
    # The peer serves other tests and benchmarks too: check MULAW and the GAPIC helper path.
    from google.cloud import speech_v1
    from google.cloud.speech_v1.services.speech.transports import SpeechGrpcTransport

    from engine.audio import ulaw_encode

    channel = grpc.insecure_channel(peer.address)
    client = speech_v1.SpeechClient(transport=SpeechGrpcTransport(channel=channel))
    config = speech_v1.StreamingRecognitionConfig(
        config=speech_v1.RecognitionConfig(
            encoding=speech_v1.RecognitionConfig.AudioEncoding.MULAW, sample_rate_hertz=8000,
            language_code="he-IL", speech_contexts=[speech_v1.SpeechContext(phrases=["call-id:mulaw"])],
        ),
        interim_results=False,
    )
    audio = ulaw_encode(silence(100) + utterance_pcm(4, 600) + silence(400))
    requests = (speech_v1.StreamingRecognizeRequest(audio_content=audio[i : i + 800]) for i in range(0, len(audio), 800))
    responses = list(client.streaming_recognize(config, requests, retry=None))
    channel.close()
    finals = [r.results[0].alternatives[0].transcript for r in responses if r.results and r.results[0].is_final]
    assert finals == [SCRIPT[0]], "a new call id starts at the top of the script"
    assert all(r.results[0].is_final for r in responses if r.results), "no interims when not asked for"
    assert peer.configs()[0].encoding == "MULAW"

"""The stub providers honour their configured timings and the provider contracts.

Correctness, not benchmarks: the stubs sleep on real threads (they stand in for
vendor SDKs that block), so these tests use small delays and wide margins, and
wait on ``threading.Event``s rather than sleeping for a fixed time.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from engine.audio import rms_pcm16, ulaw_decode
from engine.business import Business
from engine.config import load_settings
from engine.messages import CancelToken, TextDelta, Transcript
from engine.providers import make_planner, make_stt, make_tts
from engine.providers.base import LanguagePlanner, SpeechToText, TextToSpeech
from engine.providers.stub import StubPlanner, StubStt, StubTts, first_sentence_words, reply_tokens


def speech(ms: int) -> bytes:
    t = np.arange(8 * ms) / 8000
    return (6000 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()


def silence(ms: int) -> bytes:
    return b"\x00\x00" * (8 * ms)


class Collector:
    def __init__(self) -> None:
        self.items: list[Transcript] = []
        self.errors: list[BaseException] = []
        self.final = threading.Event()

    def on_transcript(self, tr: Transcript) -> None:
        self.items.append(tr)
        if tr.is_final:
            self.final.set()

    def on_error(self, exc: BaseException) -> None:
        self.errors.append(exc)

    @property
    def partials(self) -> list[str]:
        return [t.text for t in self.items if not t.is_final]


def open_session(stt: StubStt, c: Collector):
    return stt.open_session(language="en-US", sample_rate=8000, phrase_hints=(),
                            on_transcript=c.on_transcript, on_error=c.on_error)


def test_factories_build_stubs_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLENGINE_STUB_STT_FINAL_DELAY_MS", "77")
    monkeypatch.setenv("CALLENGINE_STUB_LLM_TOKENS_PER_S", "12.5")
    settings = load_settings()
    stt, tts, llm = make_stt("stub", settings), make_tts("stub", settings), make_planner("stub", settings)
    assert isinstance(stt, SpeechToText) and stt.streaming
    assert isinstance(tts, TextToSpeech) and isinstance(llm, LanguagePlanner)
    assert stt.final_delay_ms == 77 and llm.tokens_per_s == 12.5
    assert tts.first_audio_ms == settings.stub.tts_first_audio_ms


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="stt_partial_ms"):
        StubStt(partial_ms=0)
    with pytest.raises(ValueError, match="llm_tokens_per_s"):
        StubPlanner(tokens_per_s=-1)
    with pytest.raises(ValueError, match="tts_rtf"):
        StubTts(rtf=float("nan"))
    with pytest.raises(ValueError, match="8 kHz"):
        StubStt().open_session(language="en", sample_rate=16000, phrase_hints=(),
                               on_transcript=print, on_error=print)


def test_partials_grow_with_speech_and_silence_is_ignored() -> None:
    c = Collector()
    s = open_session(StubStt(partial_ms=100, text="one two three four five"), c)
    for _ in range(10):
        s.push_audio(silence(60))
    assert c.items == []  # no speech, nothing recognized
    for _ in range(5):  # 300 ms of speech in uneven batches: 3 partials
        s.push_audio(speech(60))
    s.push_audio(speech(0) + speech(20)[:100])  # a ragged batch is carried over, not lost
    assert c.partials == ["one", "one two", "one two three"]
    s.push_audio(silence(100))  # a pause (>= 60 ms): the sentence, punctuated
    assert c.partials[-1] == "one two three four five."
    assert all(not t.is_final for t in c.items) and all(t.t > 0 for t in c.items)
    s.close()


def test_final_comes_final_delay_after_end_utterance_not_before() -> None:
    c = Collector()
    s = open_session(StubStt(final_delay_ms=120, text="I need a plumber"), c)
    s.push_audio(speech(400))
    s.push_audio(silence(100))
    assert not c.final.is_set()
    t0 = time.monotonic()
    s.end_utterance()
    assert c.final.wait(2.0)
    elapsed = time.monotonic() - t0
    final = c.items[-1]
    assert final.is_final and final.text == "I need a plumber"
    assert 0.11 <= elapsed < 1.0
    s.end_utterance()  # a second end for the same utterance adds nothing
    time.sleep(0.2)
    assert sum(t.is_final for t in c.items) == 1
    # the next utterance is a new one
    s.push_audio(speech(300))
    assert c.items[-1].utterance == final.utterance + 1
    s.close()


def test_final_after_silence_without_end_utterance() -> None:
    c = Collector()
    s = open_session(StubStt(final_delay_ms=5000), c)
    s.push_audio(speech(300))
    s.push_audio(silence(200))
    assert not c.final.is_set()
    s.push_audio(silence(120))  # 320 ms of silence: the session ends the utterance itself
    assert c.final.wait(1.0)
    s.close()


def test_close_cancels_a_pending_final() -> None:
    c = Collector()
    s = open_session(StubStt(final_delay_ms=80), c)
    s.push_audio(speech(300))
    s.end_utterance()
    s.close()
    s.close()  # idempotent
    assert not c.final.wait(0.3)
    s.push_audio(speech(300))  # ignored after close
    assert all(not t.is_final for t in c.items)


def test_callback_failure_is_reported_once_as_an_error() -> None:
    errors: list[BaseException] = []

    def boom(tr: Transcript) -> None:
        raise RuntimeError("owner gone")

    s = StubStt(partial_ms=20).open_session(language="en", sample_rate=8000, phrase_hints=(),
                                            on_transcript=boom, on_error=errors.append)
    s.push_audio(speech(200))
    s.push_audio(speech(200))
    assert len(errors) == 1 and "owner gone" in str(errors[0])


BIZ = Business(id="t", name="T", language="en-US", greetings={"en": "Hi."})


def test_planner_tokens_in_order_at_the_configured_pace() -> None:
    text = "Thanks for calling. We can come tomorrow."
    conv = StubPlanner(first_token_ms=80, tokens_per_s=50, reply_text=text).open_conversation(BIZ, channel="call")
    t0 = time.monotonic()
    stamps, pieces = [], []
    for ev in conv.reply("hello", cancel=CancelToken()):
        assert isinstance(ev, TextDelta)
        stamps.append(time.monotonic() - t0)
        pieces.append(ev.text)
    assert "".join(pieces) == text
    assert pieces == reply_tokens(text) and pieces[2] == "calling. "
    assert stamps[0] >= 0.075
    assert stamps[-1] >= 0.075 + (len(pieces) - 1) * 0.02 - 0.005
    assert first_sentence_words(text) == 3
    conv.commit("hello", text)
    assert conv.history == [("user", "hello"), ("agent", text)]
    assert conv.summary() == ""
    with pytest.raises(ValueError):
        StubPlanner().open_conversation(BIZ, channel="fax")


def test_planner_cancel_stops_the_reply() -> None:
    conv = StubPlanner(first_token_ms=0, tokens_per_s=20).open_conversation(BIZ, channel="chat")
    token = CancelToken()
    got = []
    t0 = time.monotonic()
    for ev in conv.reply("x", cancel=token):
        got.append(ev)
        if len(got) == 2:
            token.cancel("barge-in")
    assert len(got) == 2
    assert time.monotonic() - t0 < 0.3

    # cancelled while waiting for the first token: returns within the poll interval
    slow = StubPlanner(first_token_ms=5000).open_conversation(BIZ, channel="call")
    token = CancelToken()
    threading.Timer(0.05, token.cancel).start()
    t0 = time.monotonic()
    assert list(slow.reply("x", cancel=token)) == []
    assert time.monotonic() - t0 < 0.5


def test_tts_audio_is_mulaw_with_energy_and_paced() -> None:
    tts = StubTts(first_audio_ms=60, rtf=0.1)
    text = "Thanks for calling."  # 19 chars -> 1140 ms of audio
    t0 = time.monotonic()
    stamps, chunks = [], []
    for chunk in tts.synthesize(text, language="en-US"):
        stamps.append(time.monotonic() - t0)
        chunks.append(chunk)
    audio = b"".join(chunks)
    assert len(audio) == tts.audio_bytes(text) == 19 * 60 * 8
    assert stamps[0] >= 0.055
    assert stamps[-1] >= 0.06 + (len(chunks) - 1) * 0.01 - 0.005  # 100 ms chunks at rtf 0.1
    for chunk in chunks:
        assert rms_pcm16(ulaw_decode(chunk)) > 1000  # a tone, not silence
    assert len(set(audio)) > 50  # real μ-law, not a constant byte


def test_tts_cancel_stops_synthesis() -> None:
    tts = StubTts(first_audio_ms=0, rtf=1.0)  # real time: 6 s of audio for 100 chars
    token = CancelToken()
    gen = tts.synthesize("x" * 100, language="en-US", cancel=token)
    first = next(gen)
    assert first
    threading.Timer(0.15, token.cancel).start()
    t0 = time.monotonic()
    rest = list(gen)
    assert time.monotonic() - t0 < 0.5
    assert len(rest) <= 3

"""WhisperStt with the real tiny.en model on espeak-ng speech sent through a phone line (8 kHz μ-law)."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest

from engine.audio import ulaw_decode
from engine.messages import Transcript
from engine.providers.base import ProviderError, SpeechToText, SttSession
from engine.providers.espeak_tts import EspeakTts
from engine.providers.whisper_stt import MAX_UTTERANCE_S, WhisperStt

CHUNK = 1600  # 100 ms of 8 kHz PCM16, the batch size the STT actor sends


@pytest.fixture(scope="module")
def stt():
    provider = WhisperStt()
    provider.warm_up()
    return provider


@pytest.fixture(scope="module")
def say():
    tts = EspeakTts(rate_wpm=150)

    def speak(text: str) -> bytes:
        return ulaw_decode(b"".join(tts.synthesize(text, language="en-US")))

    return speak


class Collector:
    def __init__(self) -> None:
        self.transcripts: list[Transcript] = []
        self.errors: list[BaseException] = []

    def session(self, stt: WhisperStt, language: str = "en-US") -> SttSession:
        return stt.open_session(
            language=language,
            sample_rate=8000,
            phrase_hints=["plumber", "leak"],
            on_transcript=self.transcripts.append,
            on_error=self.errors.append,
        )


def push(session: SttSession, pcm: bytes) -> None:
    for i in range(0, len(pcm), CHUNK):
        session.push_audio(pcm[i : i + CHUNK])


def test_interface(stt):
    assert isinstance(stt, SpeechToText)
    assert stt.name == "whisper" and stt.streaming is False
    assert stt.supports("en-US") and not stt.supports("he-IL")  # tiny.en


def test_sentences_come_back_with_their_key_words(stt, say):
    got = Collector()
    session = got.session(stt)
    cases = [
        ("I need a plumber for a leaking pipe", lambda t: "leak" in t or "plumber" in t),
        ("My name is David Cohen", lambda t: "david" in t),
        ("My phone number is 0 5 4 1 2 3 4 5 6 7", lambda t: "0541234567" in re.sub(r"\D", "", t)),
    ]
    for text, _ in cases:
        push(session, say(text))
        session.end_utterance()
    session.close()
    assert not got.errors
    assert len(got.transcripts) == 3
    for (text, check), tr in zip(cases, got.transcripts, strict=True):
        assert tr.is_final
        assert check(tr.text.lower()), (text, tr.text)
    assert [tr.utterance for tr in got.transcripts] == [1, 2, 3]  # buffer cleared each time
    assert "david" not in got.transcripts[2].text.lower()


def test_silence_and_line_noise_give_no_transcript(stt):
    got = Collector()
    session = got.session(stt)
    push(session, bytes(8000 * 2 * 2))  # 2 s of digital silence
    session.end_utterance()
    hiss = np.random.default_rng(0).normal(0, 80, 8000 * 2).astype("<i2").tobytes()
    push(session, hiss)
    session.end_utterance()
    session.end_utterance()  # empty utterance
    session.close()
    assert got.transcripts == [] and got.errors == []


def test_buffer_is_capped_at_30_seconds(stt, say):
    got = Collector()
    session = got.session(stt)
    push(session, bytes(int((MAX_UTTERANCE_S + 1) * 8000) * 2))
    assert session.dropped_bytes == 8000 * 2
    session.end_utterance()
    push(session, say("My name is David Cohen"))
    session.end_utterance()
    session.close()
    assert len(got.transcripts) == 1 and "david" in got.transcripts[0].text.lower()


def test_failure_is_reported_once_and_kills_the_session(stt, say, monkeypatch):
    got = Collector()
    session = got.session(stt)

    def broken(audio, language):
        raise RuntimeError("injected CTranslate2 failure")

    monkeypatch.setattr(stt, "_transcribe", broken)
    speech = say("My name is David Cohen")
    push(session, speech)
    session.end_utterance()
    push(session, speech)
    session.end_utterance()
    assert len(got.errors) == 1 and "injected" in str(got.errors[0])
    assert got.transcripts == []
    session.close()
    session.close()


def test_closed_session_reports_nothing(stt, say):
    got = Collector()
    session = got.session(stt)
    push(session, say("My name is David Cohen"))
    session.close()
    session.end_utterance()
    assert got.transcripts == [] and got.errors == []


def test_sessions_on_two_threads(stt, say):
    speech = say("My name is David Cohen")
    results: list[Collector] = []

    def one_call() -> None:
        got = Collector()
        session = got.session(stt)
        push(session, speech)
        session.end_utterance()
        session.close()
        results.append(got)

    threads = [threading.Thread(target=one_call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 2
    assert all(len(r.transcripts) == 1 and "david" in r.transcripts[0].text.lower() for r in results)


def test_bad_arguments(stt, tmp_path):
    with pytest.raises(ProviderError, match="model.bin"):
        WhisperStt(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"not a model")
    with pytest.raises(ProviderError, match="could not load"):
        WhisperStt(tmp_path)
    with pytest.raises(ValueError):
        stt.open_session(language="en-US", sample_rate=44100, phrase_hints=(), on_transcript=print, on_error=print)

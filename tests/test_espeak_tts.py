"""EspeakTts against the real espeak-ng program."""

from __future__ import annotations

import subprocess

import psutil
import pytest

from engine.audio import resample_pcm16, rms_pcm16, strip_wav_header, ulaw_decode, ulaw_encode
from engine.messages import CancelToken
from engine.providers.base import ProviderError, TextToSpeech
from engine.providers.espeak_tts import CHUNK_BYTES, EspeakTts

SHORT = "Hello there."
LONG = (
    "Hello there, you have reached Demo Plumbing. We are open Sunday to Thursday, eight in the "
    "morning to six in the evening, and a visit costs two hundred shekels."
)


@pytest.fixture(scope="module")
def tts():
    return EspeakTts()


def test_interface(tts):
    assert isinstance(tts, TextToSpeech)
    assert tts.name == "espeak"


def test_output_is_mulaw_speech_in_100ms_chunks(tts):
    chunks = list(tts.synthesize(LONG, language="en-US"))
    assert len(chunks) > 10
    assert all(len(c) == CHUNK_BYTES for c in chunks[:-1])
    assert 0 < len(chunks[-1]) <= CHUNK_BYTES
    audio = b"".join(chunks)
    assert not audio.startswith(b"RIFF")
    pcm = ulaw_decode(audio)
    assert rms_pcm16(pcm) > 500  # speech, not silence
    seconds = len(audio) / 8000
    assert 4.0 < seconds < 15.0


def test_streaming_equals_whole_utterance_resampling(tts):
    """The block resampler is exact: no clicks at chunk boundaries."""
    streamed = b"".join(tts.synthesize(LONG, language="en-US"))
    argv = ["espeak-ng", "--stdout", "-v", "en-us", "-s", "160", "--", LONG]
    raw = subprocess.run(argv, capture_output=True, check=True).stdout
    pcm, info = strip_wav_header(raw)
    assert info["rate"] == 22050
    assert streamed == ulaw_encode(resample_pcm16(pcm, 22050, 8000))


def test_duration_grows_with_text_length(tts):
    short = sum(len(c) for c in tts.synthesize(SHORT, language="en-US"))
    long = sum(len(c) for c in tts.synthesize(LONG, language="en-US"))
    ratio_text = len(LONG) / len(SHORT)
    ratio_audio = long / short
    assert ratio_text / 3 < ratio_audio < ratio_text * 3


def test_cancel_stops_early_and_kills_espeak(tts):
    full = len(list(tts.synthesize(LONG * 3, language="en-US")))
    token = CancelToken()
    got = []
    for chunk in tts.synthesize(LONG * 3, language="en-US", cancel=token):
        got.append(chunk)
        if len(got) == 2:
            token.cancel("barge-in")
    assert len(got) == 2 < full
    assert not [p for p in psutil.Process().children() if "espeak" in p.name() and p.status() != psutil.STATUS_ZOMBIE]


def test_closing_the_generator_reaps_the_process(tts):
    gen = tts.synthesize(LONG * 3, language="en-US")
    next(gen)
    gen.close()
    assert not [p for p in psutil.Process().children() if "espeak" in p.name()]


def test_already_cancelled_yields_nothing(tts):
    token = CancelToken()
    token.cancel()
    assert list(tts.synthesize(LONG, language="en-US", cancel=token)) == []


@pytest.mark.parametrize("text", ["--help", "-v xx; rm -rf / && echo $(id)", "a\x00b\x07c", "🙂 ok"])
def test_hostile_text_is_just_spoken(tts, text):
    audio = b"".join(tts.synthesize(text, language="en-US"))
    assert len(audio) > 800


@pytest.mark.parametrize("text", ["", "   ", "\x00\x01"])
def test_empty_text_yields_nothing(tts, text):
    assert list(tts.synthesize(text, language="en-US")) == []


def test_hebrew_and_voice_fallback(tts):
    assert tts.voice_for("he-IL") == "he"
    assert tts.voice_for("iw-IL") == "he"
    assert tts.voice_for("en-US") == "en-us"
    assert tts.voice_for("xx-YY") == "en-us"  # clear fallback, not an error
    assert tts.voice_for("en-US", voice="no-such-voice") == "en-us"
    audio = b"".join(tts.synthesize("שלום, איך אפשר לעזור?", language="he-IL"))
    assert rms_pcm16(ulaw_decode(audio)) > 500
    assert b"".join(tts.synthesize("hello", language="xx-YY"))


def test_missing_program_is_a_clear_error():
    with pytest.raises(ProviderError, match="espeak-ng"):
        EspeakTts(executable="/nonexistent/espeak-ng")
    with pytest.raises(ValueError):
        EspeakTts(rate_wpm=5)

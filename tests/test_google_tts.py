"""GoogleTts through the real ``google-cloud-texttospeech`` client against the local gRPC peer."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from engine.audio import ulaw_encode
from engine.messages import CancelToken
from engine.providers.base import ProviderError
from engine.providers.google_tts import GoogleTts
from tests.peers.tts_peer import TtsPeer, wav_wrap

TEXT = "שלום, הגעתם לדמו אינסטלציה. איך אפשר לעזור?"


@pytest.fixture
def peer():
    with TtsPeer() as p:
        yield p


@pytest.fixture
def tts(peer):
    provider = GoogleTts(endpoint=peer.address, insecure=True)
    yield provider
    provider.close()


@pytest.mark.parametrize("wrap_wav", [True, False], ids=["wav-wrapped", "bare"])
def test_yields_bare_mulaw_in_100ms_chunks(peer, tts, wrap_wav):
    peer.set_faults(wrap_wav=wrap_wav)
    chunks = list(tts.synthesize(TEXT, language="he-IL"))
    audio = b"".join(chunks)
    expected = ulaw_encode(peer.render(TEXT, 8000))  # what the peer said, as μ-law samples
    assert audio == expected, "exactly the samples: no RIFF header or fmt bytes reached the output"
    assert b"RIFF" not in audio[:64] and b"WAVE" not in audio[:64]
    assert all(len(c) == 800 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 800
    assert len(audio) == 8000 * 60 * len(TEXT) // 1000  # ~60 ms per character at 8 kHz
    (req,) = peer.requests
    assert (req.encoding, req.sample_rate) == ("MULAW", 8000)
    assert (req.language, req.voice_name, req.text) == ("he-IL", "he-IL-Wavenet-A", TEXT)


def test_voice_from_the_business_and_iw_language(peer, tts):
    list(tts.synthesize("hello", language="iw-IL", voice="he-IL-Wavenet-B"))
    list(tts.synthesize("hello", language="iw-IL"))
    list(tts.synthesize("hello", language="en-US"))
    got = [(r.language, r.voice_name) for r in peer.requests]
    assert got == [("he-IL", "he-IL-Wavenet-B"), ("he-IL", "he-IL-Wavenet-A"), ("en-US", "en-US-Wavenet-F")]


def test_service_error_raises_provider_error(peer, tts):
    peer.set_faults(fail_next=1, fail_code=grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(ProviderError, match="503|unavailable|Unavailable"):
        list(tts.synthesize("hello", language="he-IL"))
    assert list(tts.synthesize("hello", language="he-IL")), "the next request works"


def test_deadline_raises_provider_error(peer):
    provider = GoogleTts(endpoint=peer.address, insecure=True, timeout_s=0.3)
    peer.set_faults(delay_s=1.0)
    started = time.monotonic()
    with pytest.raises(ProviderError):
        list(provider.synthesize("hello", language="he-IL"))
    assert time.monotonic() - started < 0.9
    provider.close()


def test_cancel_while_the_request_is_in_flight(peer, tts):
    peer.set_faults(delay_s=2.0)
    cancel = CancelToken()
    timer = threading.Timer(0.2, cancel.cancel)
    timer.start()
    started = time.monotonic()
    assert list(tts.synthesize("a long answer", language="he-IL", cancel=cancel)) == []
    assert time.monotonic() - started < 1.0, "a barge-in does not wait for the service"
    timer.join()


def test_cancel_between_chunks_stops_the_stream(peer, tts):
    cancel = CancelToken()
    got = []
    for chunk in tts.synthesize(TEXT, language="he-IL", cancel=cancel):
        got.append(chunk)
        cancel.cancel("barge-in")
    assert len(got) == 1


def test_empty_text_and_bad_input(peer, tts):
    assert list(tts.synthesize("   ", language="he-IL")) == []
    assert peer.requests == []
    with pytest.raises(ValueError):
        list(tts.synthesize(None, language="he-IL"))  # type: ignore[arg-type]
    cancel = CancelToken()
    cancel.cancel()
    assert list(tts.synthesize("hi", language="he-IL", cancel=cancel)) == []
    assert peer.requests == []


def test_non_mulaw_wav_is_a_provider_error():
    with pytest.raises(ProviderError, match="mu-law"):
        GoogleTts._mulaw_payload(wav_wrap(b"\x00\x00" * 80, rate=8000, fmt=1, bits=16))
    with pytest.raises(ProviderError, match="mu-law"):
        GoogleTts._mulaw_payload(wav_wrap(b"\xff" * 80, rate=24000, fmt=7, bits=8))
    assert GoogleTts._mulaw_payload(wav_wrap(b"\x7f" * 81, rate=8000, fmt=7, bits=8)) == b"\x7f" * 81


def test_list_voices_through_the_client(peer, tts):
    voices = tts._client.list_voices(language_code="he")
    assert {v.name for v in voices.voices} == {"he-IL-Wavenet-A", "he-IL-Wavenet-B"}

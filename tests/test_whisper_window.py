"""The recognizer's short window and the checks that guard it (engine.providers.whisper_window).

Pure checks on made-up decodes, then the real tiny.en model on recorded prompts
(Debian asterisk-core-sounds-en-wav, installed for the tests): a short utterance is
decoded in the window and kept; a long one and a rejected windowed decode are
decoded in whisper's full 30 s.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from engine.audio import ulaw_decode, ulaw_encode
from engine.providers import whisper_stt, whisper_window
from engine.providers.whisper_stt import WhisperStt
from engine.providers.whisper_window import TOKEN_SLACK, encoder_frames, plausible, repeats

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")


@dataclass
class Seg:
    text: str
    tokens: tuple[int, ...] = (1, 2, 3)
    compression_ratio: float = 1.2
    avg_logprob: float = -0.2
    no_speech_prob: float = 0.01


@pytest.mark.parametrize(
    "text, looped",
    [
        ("press 4 to place an outgoing call press 4 to place an outgoing call", True),
        ("you are now muted you are now muted you are now muted", True),
        ("no no no", False),  # one word, said three times: speech
        ("thank you thank you", False),
        ("five five", False),
        ("eight of spades four of clubs queen of hearts", False),
        ("go on go on go on", True),
    ],
)
def test_a_repeated_phrase_is_a_loop_and_ordinary_repetition_is_not(text: str, looped: bool) -> None:
    assert repeats(text.split()) is looped


def test_plausible_holds_whisper_s_own_checks_the_token_cap_and_the_speaking_rate() -> None:
    text = "You are currently the only person in this conference."
    cap = 40
    assert plausible([Seg(text)], text, 3.2, cap)
    assert not plausible([Seg(text, compression_ratio=2.6)], text, 3.2, cap)
    assert not plausible([Seg(text, avg_logprob=-1.3)], text, 3.2, cap)
    assert not plausible([Seg(text, tokens=tuple(range(cap)))], text, 3.2, cap)  # stopped by the cap
    assert not plausible([Seg(text)], text, 0.5, cap)  # nine words in half a second
    assert plausible([Seg("okay")], "okay", 0.3, TOKEN_SLACK)


def _audio(name: str) -> np.ndarray:
    path = SOUNDS / f"{name}.wav"
    assert path.is_file(), f"{path} is missing: run scripts/ensure-system.sh test (asterisk-core-sounds-en-wav)"
    with wave.open(str(path)) as w:
        pcm = ulaw_decode(ulaw_encode(w.readframes(w.getnframes())))
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    return np.interp(np.arange(2 * len(x)) / 2.0, np.arange(len(x)), x).astype(np.float32)  # 16 kHz


@pytest.fixture(scope="module")
def stt() -> WhisperStt:
    return WhisperStt("tiny.en", partial_interval_s=0)


class FramesSeen:
    """Records the encoder's input length of every pass (the features it was handed)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, model: object) -> None:
        self.frames: list[int] = []
        original = type(model).encode

        def encode(inner: object, features: np.ndarray):  # noqa: ANN202
            limit = getattr(encoder_frames, "limit", None)
            self.frames.append(min(features.shape[-1], limit or features.shape[-1]))
            return original(inner, features)

        monkeypatch.setattr(type(model), "encode", encode)


def test_a_short_utterance_is_decoded_in_the_window(stt: WhisperStt, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = FramesSeen(monkeypatch, stt._model)
    before = stt.window_fallbacks
    text, _ = stt._transcribe(_audio("conf-onlyperson"), "en")
    assert "only person in this conference" in text.lower()
    assert seen.frames == [1000] and stt.window_fallbacks == before


def test_a_long_utterance_is_decoded_in_thirty_seconds(stt: WhisperStt, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = FramesSeen(monkeypatch, stt._model)
    text, _ = stt._transcribe(_audio("conf-adminmenu")[: 12 * 16000], "en")  # 12 s of a menu
    assert "mute" in text.lower()
    assert seen.frames == [3000]


def test_a_rejected_windowed_decode_is_decoded_again_in_thirty_seconds(
    stt: WhisperStt, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = FramesSeen(monkeypatch, stt._model)
    monkeypatch.setattr(whisper_stt, "plausible", lambda *a: False)
    before = stt.window_fallbacks
    text, _ = stt._transcribe(_audio("conf-getpin"), "en")
    assert "conference pin" in text.lower()
    assert seen.frames == [1000, 3000] and stt.window_fallbacks == before + 1


def test_the_window_is_per_thread_and_cleared_after_a_pass(stt: WhisperStt) -> None:
    stt._transcribe(_audio("conf-now-muted"), "en")
    assert getattr(encoder_frames, "limit", None) is None
    assert whisper_window.SHORT_AUDIO_S < whisper_window.SHORT_WINDOW_S

"""The short decoding window of the embedded recognizer, and the checks that guard it.

faster-whisper pads every input to whisper's 30 s window, and the encoder is most of
a pass. ``WhisperStt`` pads an utterance of at most ``SHORT_AUDIO_S`` with silence
(in the audio, so the encoder sees the log-mel of silence it was trained on) to
``SHORT_WINDOW_S`` and lets the encoder see only those frames: a base decode of a
2-6 s utterance then costs about a third of a 30 s one, with no word lost on the
telephony prompts of ``bench.whisper_stt``.

A shortened window sometimes sends whisper's decoder into a loop ("Press 4 to place a
call. Press 4 to place a call. ..."), on audio it reads well in 30 s. So a windowed
result is kept only when :func:`plausible` says so: whisper's own quality checks pass
(the compression ratio and average log probability faster-whisper uses to decide a
retry at a higher temperature), the decoder stopped before its token cap
(``MAX_TOKENS_PER_S`` of audio plus ``TOKEN_SLACK``: a loop stops early and cheaply),
the words fit the audio's length, and no phrase repeats itself. Otherwise the caller
decodes again in the full window. Windows fitted tighter to the utterance, or zero
features after it instead of silence, loop far more often: that is why the window is
a fixed 10 s of real silence.
"""

from __future__ import annotations

import re
import threading

import numpy as np

__all__ = [
    "HOP",
    "MAX_TOKENS_PER_S",
    "SHORT_AUDIO_S",
    "SHORT_WINDOW_S",
    "TOKEN_SLACK",
    "encoder_frames",
    "joined",
    "normalise",
    "plausible",
    "repeats",
    "windowed_model_class",
]

#: Audio up to this long is decoded in a SHORT_WINDOW_S window instead of 30 s.
SHORT_AUDIO_S = 7.0
SHORT_WINDOW_S = 10.0
#: A windowed decode stops after this many tokens per second of audio (plus
#: ``TOKEN_SLACK``): fast speech is about 4 words, 6 tokens, a second; a decoder
#: in a loop would otherwise run on to whisper's 448 tokens.
MAX_TOKENS_PER_S = 9.0
TOKEN_SLACK = 12
#: More words than this per second of audio (plus 4) is not speech but a loop.
MAX_WORDS_PER_S = 5.0
#: faster-whisper's own thresholds for a decode it would retry.
_COMPRESSION_RATIO_MAX = 2.4
_LOG_PROB_MIN = -1.0

_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    """Lower case, apostrophes dropped, every run of non-word characters one space."""
    return " ".join(_NOT_WORD.sub(" ", text.lower().replace("'", "")).split())


def joined(segments: list) -> tuple[str, float]:
    """A decode's text (its segments' texts, joined) and its highest no-speech probability."""
    texts = [seg.text.strip() for seg in segments]
    no_speech = max((float(seg.no_speech_prob) for seg in segments), default=0.0)
    return " ".join(t for t in texts if t).strip(), no_speech


def plausible(segments: list, text: str, seconds: float, token_cap: int) -> bool:
    """Whether a windowed decode reads as speech rather than a decoder loop."""
    for seg in segments:
        if seg.compression_ratio > _COMPRESSION_RATIO_MAX or seg.avg_logprob < _LOG_PROB_MIN:
            return False
        if len(seg.tokens) >= token_cap:
            return False
    words = normalise(text).split()
    if len(words) > MAX_WORDS_PER_S * seconds + 4:
        return False
    return not repeats(words)


def repeats(words: list[str]) -> bool:
    """A phrase of two or three words said three times running, or of four or more
    said twice running ("thank you thank you" and "five five" are speech)."""
    n_words = len(words)
    for n in range(2, n_words // 2 + 1):
        times = 3 if n < 4 else 2
        for i in range(n_words - n * times + 1):
            phrase = words[i : i + n]
            if all(words[i + k * n : i + (k + 1) * n] == phrase for k in range(1, times)):
                return True
    return False


HOP = 160  # whisper's log-mel hop: 100 frames a second
#: The encoder frames a decode on this thread may use (None: faster-whisper's 30 s).
encoder_frames = threading.local()


def windowed_model_class():  # -> a WhisperModel subclass
    """faster-whisper's model whose ``encode`` keeps only the frames ``encoder_frames.limit`` allows.

    faster-whisper pads every segment's features to 3000 frames (30 s); CTranslate2's
    encoder accepts fewer. The limit is per thread because sessions share a model and a
    decode runs on one thread from its ``transcribe`` call to its last segment.
    """
    from faster_whisper import WhisperModel

    class WindowedWhisperModel(WhisperModel):
        def encode(self, features: np.ndarray):  # noqa: ANN201
            limit = getattr(encoder_frames, "limit", None)
            if limit is not None and features.shape[-1] > limit:
                features = np.ascontiguousarray(features[..., :limit])
            return super().encode(features)

    return WindowedWhisperModel

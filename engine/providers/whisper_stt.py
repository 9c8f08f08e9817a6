"""The embedded STT: faster-whisper (CTranslate2) on VAD-cut utterances, with partials.

Whisper is a batch recognizer (``streaming = False``: the STT actor sends it only
speech, after a pre-roll, and calls ``end_utterance`` when the VAD says the caller
stopped). It still gives partial transcripts (``partials = True``): while the
caller speaks, the session re-decodes the whole utterance so far every
``partial_interval_s`` of new audio (from ``FIRST_PASS_S`` on), and sooner when the
newest batch is quiet (a likely end of speech), and reports each new text as
``Transcript(is_final=False)``, the same message a streaming recognizer sends.

Models (``engine.providers.whisper_model``): ``base`` (multilingual) by default,
``tiny.en`` for small boxes, or a CTranslate2 model directory. The model is loaded
once per provider object, which the host creates once per process, and shared by
every session; ``device="cpu", compute_type="int8"``.

CPU: interval passes run on a second instance of the model whose CTranslate2
threads run at a lower CPU priority (``PARTIAL_NICE``: threads inherit the
niceness of the thread that creates them, so the instance is built on a niced
thread), so they never take the CPU from a final or from the 20 ms path; the
pass at a pause runs on the finals' instance (see "The final" below). Every decode goes through one
process-wide ``DecodeGate`` (sized by the first provider created): finals wait
only for other finals; a partial pass runs on the process's one partial thread
only when no final waits, a final slot is free, and the partial budget has
credit, otherwise it is skipped (the next batch tries again). A session never
has two passes in flight.

The final: ``end_utterance`` decodes the whole utterance on the calling thread
(the STT actor's), with priority. When the latest partial pass already covered
all of it except a quiet tail (the VAD's hangover), its text is the final, taken
at once or when that pass ends, with no second decode: whisper decodes a window
whatever the length of audio in it, so one pass costs as much as another. The pass
started at a pause (the likely end of the utterance) decodes on the finals' instance,
at their priority, because it usually becomes the final; interval passes run niced,
and a final waits at most ``REUSE_WAIT_S`` for one of those (a niced pass can be
starved by other calls' finals) before decoding the utterance itself.
A partial is never reported after its utterance's final (one lock orders them).

The window (``engine.providers.whisper_window``): an utterance of up to 7 s is
decoded in a 10 s window of silence-padded audio, a third of the cost of whisper's
30 s; a result that fails the window's checks (a decoder loop) is decoded again in
30 s. ``window_fallbacks`` counts those.

Silence: an utterance that is too short or too quiet is not transcribed at all;
a result that is empty, only punctuation, or a known whisper hallucination on
non-speech ("Thank you.", "[BLANK_AUDIO]"...) reported with a high no-speech
probability or from low-energy audio is dropped.

Rejected: faster-whisper's own ``vad_filter`` (our VAD already cut the utterance),
timestamps and conditioning on earlier text (slower, and a partial must not steer
the next), beam search (``beam_size=1`` keeps a pass well under a second), and phrase
hints as ``hotwords``/``initial_prompt`` (they make whisper repeat the hints on noise).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engine.audio import resample_pcm16, rms_pcm16
from engine.business import short_lang
from engine.messages import Transcript
from engine.providers.base import ProviderError
from engine.providers.decode_gate import DecodeGate
from engine.providers.whisper_model import resolve_model
from engine.providers.whisper_window import (
    MAX_TOKENS_PER_S,
    SHORT_AUDIO_S,
    SHORT_WINDOW_S,
    TOKEN_SLACK,
    HOP,
    encoder_frames,
    joined,
    normalise,
    plausible,
    windowed_model_class,
)

__all__ = ["WhisperStt", "WhisperSession", "process_gate"]

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

#: A batch this far below the utterance's loudest batch is a pause: start a pass now.
QUIET_RATIO = 0.15
#: The final reuses a pass whose uncovered tail is at most this long ...
REUSE_MAX_TAIL_S = 0.6
#: ... and no 20 ms frame of it louder than this fraction of the loudest batch.
REUSE_TAIL_RATIO = 0.1
#: The final waits this long for a niced pass it would reuse; past it, it decodes itself.
REUSE_WAIT_S = 0.3
#: A pause-triggered pass needs at least this much audio since the last one began.
MIN_PAUSE_PASS_S = 0.3
#: Niceness added to the partial model's threads (CFS gives a nice-0 thread about
#: nine times their share of a contended core).
PARTIAL_NICE = 10
#: No interval pass before this much audio (pre-roll included): a short answer ("yes",
#: a name) gets only the pass at its pause, so its final never waits behind a partial.
FIRST_PASS_S = 1.2

_process_lock = threading.Lock()
_gate: DecodeGate | None = None
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def process_gate(slots: int = 1, partial_share: float = 0.5) -> DecodeGate:
    """The process's decode gate; the first call sizes it, later calls get the same one."""
    global _gate, _pool
    with _process_lock:
        if _gate is None:
            _gate = DecodeGate(max(1, slots), partial_slots=1, partial_share=partial_share)
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper-partial")
        return _gate


def _partial_pool() -> concurrent.futures.ThreadPoolExecutor:
    process_gate()
    assert _pool is not None
    return _pool


class WhisperStt:
    """``SpeechToText`` over a local CTranslate2 whisper model (one per process).

    Construction loads the model (seconds; run it off the trio thread) and raises
    ``ProviderError`` for a missing or unloadable model, naming the fix. Thread-safe:
    sessions on many threads share the model.

    ``model_path``: "base" (default), "tiny.en", or a model directory.
    ``language``: "" uses each call's (the business's) language; "auto" lets whisper
    detect it per utterance; a code such as "he" forces one.
    ``partial_interval_s``: new audio between partial passes; 0 turns partials off.
    """

    name = "whisper"
    streaming = False
    partials = True

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        cpu_threads: int = 2,
        num_workers: int = 1,
        beam_size: int = 1,
        language: str = "",
        partial_interval_s: float = 0.6,
        partial_share: float = 0.5,
    ) -> None:
        if cpu_threads < 1 or num_workers < 1 or beam_size < 1:
            raise ValueError("cpu_threads, num_workers and beam_size must be >= 1")
        if partial_interval_s < 0:
            raise ValueError("partial_interval_s must be >= 0")
        path = resolve_model(str(model_path) if model_path else "base")
        self._model = _load(path, cpu_threads, num_workers)
        self._partial_model = _load(path, cpu_threads, 1, nice=PARTIAL_NICE) if partial_interval_s > 0 else None
        self.model_path = path
        self.multilingual = bool(self._model.model.is_multilingual)
        self.partials = partial_interval_s > 0
        self.partial_interval_s = partial_interval_s
        self._beam_size = beam_size
        self._language = language.strip()
        self.gate = process_gate(num_workers, partial_share)
        self._warned: set[str] = set()
        #: Windowed decodes whose result failed the checks and were decoded again in 30 s.
        self.window_fallbacks = 0

    def supports(self, language: str) -> bool:
        """Whether the model recognizes ``language`` (BCP-47); English-only models say no to others."""
        lang = short_lang(language)
        return lang == "en" or (self.multilingual and lang in self._model.supported_languages)

    def warm_up(self) -> None:
        """Run one short transcription so the first caller does not pay for it. Blocking."""
        t = np.arange(int(0.5 * WHISPER_RATE)) / WHISPER_RATE
        tone = (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
        self._transcribe(tone, "en")
        if self._partial_model is not None:
            self._transcribe(tone, "en", niced=True)

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
        return WhisperSession(self, self.whisper_language(language), sample_rate, on_transcript, on_error)

    def whisper_language(self, language: str) -> str | None:
        """The language code whisper decodes a call in (None: detect per utterance)."""
        wanted = self._language or language or "en"
        if wanted == "auto":
            return None if self.multilingual else "en"
        lang = short_lang(wanted)
        if self.supports(wanted):
            return lang
        # Never fail a call over this: an English-only model transcribes as
        # English, a multilingual one detects the language itself.
        fallback = None if self.multilingual else "en"
        if lang not in self._warned:
            self._warned.add(lang)
            log.warning("whisper model %s does not know %r; using %s", self.model_path, wanted, fallback or "auto")
        return fallback

    def transcribe_pcm16(self, pcm16: bytes, sample_rate: int, language: str | None = None) -> str:
        """Blocking one-shot transcription of PCM16 audio (as a final); returns "" for silence."""
        return self._recognize(pcm16, sample_rate, language)

    # ------------------------------------------------------------------ internals

    def _recognize(
        self, pcm16: bytes, sample_rate: int, language: str | None, *, partial: bool = False, niced: bool = True
    ) -> str:
        """The kept text; empty when nothing was said. A final takes a decode slot
        here (waiting, with priority); a partial's caller already holds one, and
        decodes on the niced instance unless ``niced`` is false."""
        if len(pcm16) < 2 * MIN_UTTERANCE_S * sample_rate:
            return ""
        level = rms_pcm16(pcm16)
        if level < MIN_RMS:
            return ""
        pcm = resample_pcm16(pcm16, sample_rate, WHISPER_RATE) if sample_rate != WHISPER_RATE else pcm16
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        if partial:
            text, no_speech = self._transcribe(audio, language, niced=niced)
        else:
            self.gate.acquire_final()
            try:
                text, no_speech = self._transcribe(audio, language)
            finally:
                self.gate.release_final()
        norm = normalise(text)
        if not norm:
            return ""
        if no_speech > _NO_SPEECH_DROP and norm in _HALLUCINATIONS:
            return ""
        if norm in _HALLUCINATIONS and level < _HALLUCINATION_RMS:
            return ""
        if norm.startswith("blank audio") or norm in ("music", "silence"):
            return ""
        return text

    def _transcribe(self, audio: np.ndarray, language: str | None, *, niced: bool = False) -> tuple[str, float]:
        """(text, highest no-speech probability) of one pass: in the short window when
        the audio fits it and the result passes the checks, else in whisper's 30 s."""
        model = self._partial_model if niced and self._partial_model is not None else self._model
        seconds = len(audio) / WHISPER_RATE
        if seconds <= SHORT_AUDIO_S:
            window = int(SHORT_WINDOW_S * WHISPER_RATE)
            padded = np.concatenate([audio, np.zeros(window - len(audio), dtype=np.float32)])
            cap = int(MAX_TOKENS_PER_S * seconds) + TOKEN_SLACK
            encoder_frames.limit = window // HOP
            try:
                segments = self._decode(model, padded, language, temperature=0.0, max_new_tokens=cap)
            finally:
                encoder_frames.limit = None
            text, no_speech = joined(segments)
            if text and plausible(segments, text, seconds, cap):
                return text, no_speech
            with _process_lock:
                self.window_fallbacks += 1
        return joined(self._decode(model, audio, language))

    def _decode(self, model, audio: np.ndarray, language: str | None, **options: object) -> list:  # noqa: ANN001
        segments, _info = model.transcribe(
            audio,
            language=language,
            beam_size=self._beam_size,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
            **options,
        )
        return list(segments)  # decoding happens while iterating


def _load(path: Path, cpu_threads: int, num_workers: int, *, nice: int = 0):  # -> WhisperModel
    """Load a CTranslate2 whisper model; with ``nice``, on a thread of that much lower
    priority, whose niceness the model's worker and compute threads inherit."""
    WhisperModel = windowed_model_class()

    box: dict[str, object] = {}

    def build() -> None:
        try:
            if nice:
                tid = threading.get_native_id()
                os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
            box["model"] = WhisperModel(
                str(path), device="cpu", compute_type="int8", cpu_threads=cpu_threads, num_workers=num_workers
            )
        except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError for bad files
            box["error"] = exc

    if nice:
        t = threading.Thread(target=build, name="whisper-load")
        t.start()
        t.join()
    else:
        build()
    if "error" in box:
        raise ProviderError(f"could not load the whisper model at {path}: {box['error']}") from box["error"]  # type: ignore[misc]
    return box["model"]


class _Pass:
    """One partial decode of the first ``covered`` bytes of utterance ``utterance``;
    ``likely_final``: started at a pause, so likely to become the final."""

    __slots__ = ("utterance", "covered", "likely_final", "done", "text")

    def __init__(self, utterance: int, covered: int, likely_final: bool = False) -> None:
        self.utterance = utterance
        self.covered = covered
        self.likely_final = likely_final
        self.done = threading.Event()
        self.text: str | None = None  # None: the pass failed or was skipped


class WhisperSession:
    """One call's recognition session (implements ``SttSession``).

    ``push_audio`` appends (under a lock) and may hand a partial pass to the
    process's partial pool: it never decodes. ``end_utterance`` produces the final
    on the calling thread and reports it there; partials are reported from the
    pool's threads, always under the session's lock (which is what orders a partial
    before its final), so ``on_transcript`` must not call back into the session.
    ``on_error`` is called at most once, after which the session ignores further
    audio. ``close`` is idempotent and never raises.
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
        self._lock = threading.Lock()  # buffer and pass state; also orders every report
        self._buf = bytearray()
        self._cap = int(MAX_UTTERANCE_S * sample_rate) * 2
        self._interval = int(provider.partial_interval_s * sample_rate) * 2 if provider.partials else 0
        self._pause_min = int(MIN_PAUSE_PASS_S * sample_rate) * 2
        self._first_pass = max(self._interval, int(FIRST_PASS_S * sample_rate) * 2) if self._interval else 0
        self.dropped_bytes = 0  # audio beyond the 30 s cap, over the session
        self._utterance = 1  # the utterance being heard now
        self._peak = 0.0  # loudest batch of this utterance (RMS)
        self._next_pass_at = self._first_pass
        self._pass: _Pass | None = None  # the latest pass of this utterance
        self._partial_text = ""
        self._dead = False
        self._closed = False
        self.partials_sent = 0
        self.finals_reused = 0

    def push_audio(self, pcm16: bytes) -> None:
        """Append PCM16 audio to the current utterance (audio beyond 30 s is dropped)."""
        with self._lock:
            if self._dead or self._closed:
                return
            room = self._cap - len(self._buf)
            if len(pcm16) > room:
                self.dropped_bytes += len(pcm16) - max(room, 0)
                pcm16 = pcm16[: max(room, 0)]
            if not pcm16:
                return
            self._buf += pcm16
            if not self._interval:
                return
            level = rms_pcm16(pcm16[: len(pcm16) & ~1])
            self._peak = max(self._peak, level)
            running = self._pass is not None and not self._pass.done.is_set()
            if running:
                return
            size = len(self._buf)
            since = size - (self._pass.covered if self._pass is not None else 0)
            due = size >= self._next_pass_at
            pause = since >= self._pause_min and level < QUIET_RATIO * self._peak and self._peak >= 2 * MIN_RMS
            if not (due or pause) or not self._provider.gate.try_acquire_partial():
                return
            job = _Pass(self._utterance, size & ~1, likely_final=pause)
            self._pass = job
            self._next_pass_at = size + self._interval
            audio = bytes(self._buf[: job.covered])
        try:
            _partial_pool().submit(self._run_pass, job, audio)
        except RuntimeError:  # the pool is shut down: the interpreter is exiting
            self._provider.gate.release_partial(0.0)
            job.done.set()

    def end_utterance(self) -> None:
        """Report the buffered utterance's final (blocking) and start the next utterance."""
        with self._lock:
            if self._dead or self._closed:
                return
            audio = bytes(self._buf[: len(self._buf) & ~1])
            n = self._utterance
            reuse = self._pass if self._pass is not None and self._covers(audio, self._pass.covered) else None
            self._buf.clear()
            self._utterance += 1
            self._peak = 0.0
            self._next_pass_at = self._first_pass
            self._pass = None
            self._partial_text = ""
        text: str | None = None
        if reuse is not None and reuse.done.wait(None if reuse.likely_final else REUSE_WAIT_S):
            text = reuse.text
        if text is None:
            try:
                text = self._provider._recognize(audio, self._rate, self._language)
            except Exception as exc:
                self._fail(exc)
                return
        else:
            self.finals_reused += 1
        with self._lock:
            if text and not self._closed and not self._dead:
                self._on_transcript(
                    Transcript(text=text, is_final=True, t=time.monotonic(), confidence=0.0, utterance=n)
                )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._buf.clear()
            self._pass = None

    # ---- internals -------------------------------------------------------------------

    def _covers(self, audio: bytes, covered: int) -> bool:
        """Whether a pass over ``audio[:covered]`` heard all the speech: the rest is a
        short tail with no 20 ms frame near speech level. Called under the lock."""
        tail = memoryview(audio)[covered:]
        if len(tail) > REUSE_MAX_TAIL_S * self._rate * 2:
            return False
        if len(tail) < 2:
            return True
        frame = int(0.02 * self._rate) * 2
        x = np.frombuffer(tail[: len(tail) & ~1], dtype="<i2").astype(np.float32)
        n = max(1, len(x) // (frame // 2))
        loudest = max(float(np.sqrt(np.mean(f * f))) for f in np.array_split(x, n))
        return loudest < max(MIN_RMS, REUSE_TAIL_RATIO * self._peak)

    def _run_pass(self, job: _Pass, audio: bytes) -> None:
        """A partial pass, on a pool thread; its gate slot is already held."""
        started = time.monotonic()
        try:
            job.text = self._provider._recognize(
                audio, self._rate, self._language, partial=True, niced=not job.likely_final
            )
        except Exception:  # the final, decoded again, reports a real failure
            log.warning("whisper partial pass failed", exc_info=True)
        finally:
            self._provider.gate.release_partial(time.monotonic() - started)
            with self._lock:
                job.done.set()
                text = job.text
                current = job.utterance == self._utterance and not self._closed and not self._dead
                if current and text and text != self._partial_text:
                    self._partial_text = text
                    self.partials_sent += 1
                    self._on_transcript(
                        Transcript(text=text, is_final=False, t=time.monotonic(), utterance=job.utterance)
                    )

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._dead:
                return
            self._dead = True
        try:
            self._on_error(exc)
        except Exception:  # the owner's callback must not take the actor thread down here
            log.exception("whisper session on_error callback failed")

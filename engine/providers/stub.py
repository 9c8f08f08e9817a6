"""Stub providers: speech and language services that only *wait*, for measuring the engine alone.

The load tester (``callengine loadtest``, ``bench/run_bench.sh``) runs the host
with ``CALLENGINE_STT=stub CALLENGINE_TTS=stub CALLENGINE_LLM=stub`` so that every
millisecond a simulated caller measures is either a delay injected here (known,
configured in ``[stub]`` of ``config/default.toml``, env ``CALLENGINE_STUB_*``) or
the engine's own overhead. The stubs burn almost no CPU: they sleep on deadlines,
so the CPU a benchmark sees is the engine's.

What each stub does (times are from the call the engine makes):

* :class:`StubStt` (``streaming=True``, so the STT actor feeds it *all* caller
  audio, speech and silence, in 40-100 ms batches). Each session detects speech
  itself by energy: RMS of each 20 ms window of PCM16 against ``speech_rms``.
  Every ``partial_ms`` of detected speech it reports an interim ``Transcript``
  whose text is a growing prefix of ``text`` (word by word; cycling through the
  sentence again if the caller talks longer). When it has heard ``pause_ms`` of
  silence after speech it re-reports the partial as the whole sentence with a
  final full stop, as a punctuating streaming recognizer does at a pause; that
  partial is "strong" for the planner's early finalize (>= 12 chars ending in
  ``.``). The final (``text``) comes ``final_delay_ms`` after ``end_utterance()``,
  or, when ``end_utterance`` never comes, after ``silence_final_ms`` of silence.
  Partials are reported on the thread that pushes audio (the STT actor's); finals
  from the session's ``threading.Timer``. ``close()`` cancels a pending final;
  nothing is reported after ``close()`` returns.
* :class:`StubPlanner`: each reply yields its first ``TextDelta`` after
  ``first_token_ms`` and then one word (with its trailing space) every
  ``1/tokens_per_s`` seconds, on absolute deadlines (no drift), of ``reply_text``.
  It stops within ``_CANCEL_POLL_S`` of its ``CancelToken`` being set. ``commit``
  keeps the history; ``summary`` is ``""``.
* :class:`StubTts`: the first chunk after ``first_audio_ms``, then 100 ms chunks
  produced at ``rtf`` (real-time factor: 0.2 means 1 s of audio takes 0.2 s), of
  ``ms_per_char`` (60) ms of audio per character of text. The audio is a μ-law
  tone with a little noise, not silence, because the simulated caller's
  playback accounting and VAD work on energy. Stops on cancel.

The engine's overhead for one caller turn, as the caller measures it (see
``docs/benchmarks.md``; ``bench.loadtest.injected_delays`` computes it from the
same settings)::

    overhead = (reply_first_frame - speech_end)
               - (vad.hangover_ms                      # the decoder's turn-end hangover
                  + [stt_final_delay_ms if turn.early_finalize is off]
                  + llm_first_token_ms
                  + (words_in_first_sentence - 1) / llm_tokens_per_s
                  + tts_first_audio_ms)

With early finalize on, the punctuated partial is already there when the VAD
hangover ends, so the turn ends at ``SpeechEnded`` and the final's delay is off
the critical path; the planner sends the first sentence to TTS when the word
that ends it arrives (its trailing space completes the sentence boundary).

Threads: the provider objects are shared by the process and immutable after
construction; a session, a conversation or a ``synthesize`` generator is used
by one thread at a time (plus the session's own timer thread), as
``engine.providers.base`` specifies. All sleeping happens on those threads,
never on the trio thread.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np

from engine.audio import ulaw_encode
from engine.messages import CancelToken, TextDelta, Transcript
from engine.providers.base import PlannerEvent

if TYPE_CHECKING:
    from engine.business import Business
    from engine.config import Settings

__all__ = [
    "StubStt",
    "StubSttSession",
    "StubPlanner",
    "StubConversation",
    "StubTts",
    "DEFAULT_STT_TEXT",
]

DEFAULT_STT_TEXT = "I need a plumber for a leaking pipe"
_WINDOW_BYTES = 320  # 20 ms of 8 kHz PCM16
_WINDOW_MS = 20.0
_CANCEL_POLL_S = 0.02  # a cancelled stub stops within this long
_CHUNK_MS = 100  # StubTts chunk length
_TONE_SECONDS = 2  # length of the pre-encoded tone loop


def _positive(name: str, value: float, *, allow_zero: bool = True) -> float:
    value = float(value)
    if math.isnan(value) or value < 0 or (not allow_zero and value == 0):
        raise ValueError(f"stub setting {name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


def _sleep_until(deadline: float, cancel: CancelToken | None) -> bool:
    """Sleep until ``time.monotonic() >= deadline``; False if ``cancel`` was set first."""
    while True:
        if cancel is not None and cancel.cancelled:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, _CANCEL_POLL_S) if cancel is not None else left)


# ====================================================================== STT


class StubSttSession:
    """One call's stub recognition session (see the module docstring).

    ``push_audio`` and ``end_utterance`` run on the owner's thread (the STT actor);
    partials are reported synchronously from ``push_audio``, finals from this
    session's ``threading.Timer``. A lock serializes the two, so transcripts of one
    session never interleave and none is reported after ``close()`` returns.
    """

    def __init__(
        self,
        *,
        words: Sequence[str],
        partial_ms: float,
        final_delay_ms: float,
        pause_ms: float,
        silence_final_ms: float,
        speech_rms: float,
        on_transcript: Callable[[Transcript], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._words = list(words)
        self._partial_ms = partial_ms
        self._final_delay_s = final_delay_ms / 1000.0
        self._pause_ms = pause_ms
        self._silence_final_ms = silence_final_ms
        self._threshold_sq = speech_rms * speech_rms
        self._on_transcript = on_transcript
        self._on_error = on_error
        self._lock = threading.Lock()
        self._closed = False
        self._timer: threading.Timer | None = None
        self._rest = b""
        # per-utterance state (under the lock)
        self._in_utterance = False
        self._speech_ms = 0.0
        self._silence_ms = 0.0
        self._partials = 0
        self._punctuated = False
        self._final_scheduled = False
        self._utterance = 0
        # counters, read by tests and benchmarks
        self.partials_sent = 0
        self.finals_sent = 0

    # -- the SttSession protocol (owner's thread) -------------------------------------

    def push_audio(self, pcm16: bytes) -> None:
        """Detect speech per 20 ms window; report partials. Never blocks for long."""
        if self._closed or not pcm16:
            return
        data = self._rest + pcm16
        usable = len(data) - len(data) % _WINDOW_BYTES
        self._rest = data[usable:]
        if not usable:
            return
        x = np.frombuffer(data, dtype="<i2", count=usable // 2).astype(np.float32)
        energy = (x.reshape(-1, _WINDOW_BYTES // 2) ** 2).mean(axis=1)
        out: list[Transcript] = []
        with self._lock:
            if self._closed:
                return
            for e in energy:
                if e >= self._threshold_sq:
                    self._speech_window(out)
                else:
                    self._silence_window(out)
            self._emit_locked(out)

    def end_utterance(self) -> None:
        """The engine's VAD says the caller stopped: the final follows ``final_delay_ms`` later."""
        with self._lock:
            if self._closed or not self._in_utterance or self._final_scheduled:
                return
            self._schedule_final_locked(self._final_delay_s)

    def close(self) -> None:
        """Cancel a pending final and stop reporting. Idempotent; never raises."""
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    # -- internals (under the lock) ---------------------------------------------------

    def _speech_window(self, out: list[Transcript]) -> None:
        if self._final_scheduled:
            # New speech before the previous final went out: that final still
            # belongs to the previous utterance; this speech starts a new one after it.
            return
        if not self._in_utterance:
            self._in_utterance = True
            self._speech_ms = 0.0
            self._partials = 0
            self._utterance += 1
        self._silence_ms = 0.0
        self._punctuated = False
        before = int(self._speech_ms // self._partial_ms)
        self._speech_ms += _WINDOW_MS
        if int(self._speech_ms // self._partial_ms) > before:
            self._partials += 1
            out.append(Transcript(self._prefix(self._partials), False, 0.0, 0.5, 0.0, self._utterance))

    def _silence_window(self, out: list[Transcript]) -> None:
        if not self._in_utterance or self._final_scheduled:
            return
        self._silence_ms += _WINDOW_MS
        if not self._punctuated and self._silence_ms >= self._pause_ms:
            self._punctuated = True
            out.append(Transcript(self._sentence() + ".", False, 0.0, 0.9, 0.0, self._utterance))
        if self._silence_ms >= self._silence_final_ms:
            self._schedule_final_locked(0.0)

    def _prefix(self, n: int) -> str:
        words = self._words
        return " ".join(itertools.islice(itertools.cycle(words), n))

    def _sentence(self) -> str:
        return " ".join(self._words)

    def _schedule_final_locked(self, delay_s: float) -> None:
        self._final_scheduled = True
        utterance = self._utterance
        timer = threading.Timer(delay_s, self._final, args=(utterance,))
        timer.daemon = True
        self._timer = timer
        timer.start()

    def _final(self, utterance: int) -> None:
        """Runs on the timer's thread."""
        with self._lock:
            if self._closed or utterance != self._utterance or not self._final_scheduled:
                return
            self._final_scheduled = False
            self._in_utterance = False
            self._timer = None
            self._emit_locked([Transcript(self._sentence(), True, 0.0, 1.0, 0.9, utterance)])

    def _emit_locked(self, transcripts: list[Transcript]) -> None:
        for tr in transcripts:
            tr = Transcript(tr.text, tr.is_final, time.monotonic(), tr.stability, tr.confidence, tr.utterance)
            if tr.is_final:
                self.finals_sent += 1
            else:
                self.partials_sent += 1
            try:
                self._on_transcript(tr)
            except Exception as exc:  # noqa: BLE001 - the owner's callback failed: report it once
                self._closed = True
                self._on_error(exc)
                return


class StubStt:
    """``SpeechToText`` that recognizes nothing and answers on a schedule (module docstring)."""

    name = "stub"
    streaming = True

    def __init__(
        self,
        *,
        partial_ms: float = 200.0,
        final_delay_ms: float = 150.0,
        text: str = DEFAULT_STT_TEXT,
        pause_ms: float = 60.0,
        silence_final_ms: float = 300.0,
        speech_rms: float = 150.0,
    ) -> None:
        self.partial_ms = _positive("stt_partial_ms", partial_ms, allow_zero=False)
        self.final_delay_ms = _positive("stt_final_delay_ms", final_delay_ms)
        self.pause_ms = _positive("pause_ms", pause_ms, allow_zero=False)
        self.silence_final_ms = _positive("silence_final_ms", silence_final_ms, allow_zero=False)
        self.speech_rms = _positive("speech_rms", speech_rms, allow_zero=False)
        words = str(text).strip().rstrip(".!?…").split()
        if not words:
            raise ValueError("stub STT text must have at least one word")
        self.words = tuple(words)

    @classmethod
    def from_settings(cls, settings: "Settings") -> "StubStt":
        s = settings.stub
        return cls(
            partial_ms=s.stt_partial_ms,
            final_delay_ms=s.stt_final_delay_ms,
            text=getattr(s, "stt_text", DEFAULT_STT_TEXT) or DEFAULT_STT_TEXT,
        )

    def open_session(
        self,
        *,
        language: str,
        sample_rate: int,
        phrase_hints: Sequence[str],
        on_transcript: Callable[[Transcript], None],
        on_error: Callable[[BaseException], None],
    ) -> StubSttSession:
        if sample_rate != 8000:
            raise ValueError(f"stub STT takes 8 kHz PCM16, got sample_rate={sample_rate}")
        return StubSttSession(
            words=self.words,
            partial_ms=self.partial_ms,
            final_delay_ms=self.final_delay_ms,
            pause_ms=self.pause_ms,
            silence_final_ms=self.silence_final_ms,
            speech_rms=self.speech_rms,
            on_transcript=on_transcript,
            on_error=on_error,
        )


# ====================================================================== LLM


def reply_tokens(text: str) -> list[str]:
    """The stub planner's tokens: one per word, each but the last with its trailing space."""
    words = text.split()
    return [w + " " for w in words[:-1]] + words[-1:]


def first_sentence_words(text: str) -> int:
    """Words up to and including the first one that ends a sentence (``.!?…``)."""
    words = text.split()
    for i, w in enumerate(words):
        if w[-1] in ".!?…":
            return i + 1
    return len(words)


class StubConversation:
    """One conversation with the stub planner. ``reply`` runs on the planner's worker
    thread and sleeps there; ``commit``/``summary`` are cheap and thread-safe."""

    def __init__(self, *, reply_text: str, first_token_ms: float, tokens_per_s: float,
                 history: Iterable[tuple[str, str]] = ()) -> None:
        self._tokens = reply_tokens(reply_text)
        self._first_s = first_token_ms / 1000.0
        self._gap_s = 1.0 / tokens_per_s
        self._lock = threading.Lock()
        self.history: list[tuple[str, str]] = list(history)

    def reply(self, user_text: str, *, cancel: CancelToken) -> Iterator[PlannerEvent]:
        t0 = time.monotonic()
        for i, token in enumerate(self._tokens):
            if not _sleep_until(t0 + self._first_s + i * self._gap_s, cancel):
                return
            yield TextDelta(token)

    def commit(self, user_text: str, agent_text: str, *, interrupted: bool = False) -> None:
        with self._lock:
            self.history.append(("user", user_text))
            self.history.append(("agent", agent_text + (" [interrupted]" if interrupted else "")))

    def summary(self) -> str:
        return ""


class StubPlanner:
    """``LanguagePlanner`` whose every answer is ``reply_text`` at a configured pace."""

    name = "stub"

    def __init__(self, *, first_token_ms: float = 300.0, tokens_per_s: float = 40.0,
                 reply_text: str = "Thanks for calling. We can send a technician tomorrow morning.") -> None:
        self.first_token_ms = _positive("llm_first_token_ms", first_token_ms)
        self.tokens_per_s = _positive("llm_tokens_per_s", tokens_per_s, allow_zero=False)
        if not str(reply_text).strip():
            raise ValueError("stub reply_text must not be empty")
        self.reply_text = str(reply_text).strip()

    @classmethod
    def from_settings(cls, settings: "Settings") -> "StubPlanner":
        s = settings.stub
        return cls(first_token_ms=s.llm_first_token_ms, tokens_per_s=s.llm_tokens_per_s, reply_text=s.reply_text)

    def open_conversation(self, business: "Business", *, channel: str,
                          history: Iterable[tuple[str, str]] = ()) -> StubConversation:
        if channel not in ("call", "chat"):
            raise ValueError(f"channel must be 'call' or 'chat', got {channel!r}")
        return StubConversation(reply_text=self.reply_text, first_token_ms=self.first_token_ms,
                                tokens_per_s=self.tokens_per_s, history=history)


# ====================================================================== TTS


def _tone_loop() -> bytes:
    """Two seconds of a 300+450 Hz tone with noise at about -16 dBFS, μ-law encoded once."""
    n = 8000 * _TONE_SECONDS
    t = np.arange(n) / 8000.0
    rng = np.random.default_rng(20240611)
    x = 0.6 * np.sin(2 * np.pi * 300 * t) + 0.4 * np.sin(2 * np.pi * 450 * t) + 0.1 * rng.standard_normal(n)
    pcm = np.clip(x * 5000, -32768, 32767).astype("<i2").tobytes()
    return ulaw_encode(pcm)


class StubTts:
    """``TextToSpeech`` that produces a tone as long as speech of ``text`` would be."""

    name = "stub"

    def __init__(self, *, first_audio_ms: float = 100.0, rtf: float = 0.2, ms_per_char: float = 60.0) -> None:
        self.first_audio_ms = _positive("tts_first_audio_ms", first_audio_ms)
        self.rtf = _positive("tts_rtf", rtf)
        self.ms_per_char = _positive("ms_per_char", ms_per_char, allow_zero=False)
        self._tone = _tone_loop()

    @classmethod
    def from_settings(cls, settings: "Settings") -> "StubTts":
        s = settings.stub
        return cls(first_audio_ms=s.tts_first_audio_ms, rtf=s.tts_rtf)

    def audio_bytes(self, text: str) -> int:
        """How many μ-law bytes ``synthesize(text)`` yields in all (8 per ms)."""
        return int(round(len(text.strip()) * self.ms_per_char)) * 8

    def synthesize(self, text: str, *, language: str, voice: str = "",
                   cancel: CancelToken | None = None) -> Iterator[bytes]:
        """Blocking generator, run on the TTS actor's thread (see the module docstring)."""
        total = self.audio_bytes(text)
        chunk = _CHUNK_MS * 8
        t0 = time.monotonic()
        first_s = self.first_audio_ms / 1000.0
        per_chunk_s = _CHUNK_MS / 1000.0 * self.rtf
        tone = self._tone
        pos = 0
        k = 0
        while pos < total:
            if not _sleep_until(t0 + first_s + k * per_chunk_s, cancel):
                return
            n = min(chunk, total - pos)
            start = pos % len(tone)
            piece = tone[start : start + n]
            if len(piece) < n:
                piece += tone[: n - len(piece)]
            yield piece
            pos += n
            k += 1

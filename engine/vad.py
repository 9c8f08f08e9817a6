"""Voice activity detection for one call: silero (ONNX, no torch) behind a webrtcvad pre-gate.

The detector's bookkeeping runs on the trio thread, inside the decoder, once per
20 ms caller frame, as plain calls (a thread handoff per frame costs more than
that work; docs/architecture.md), silero included (~65 µs per 32 ms window that may hold
speech). ``feed`` never logs, never blocks and allocates little:

- Frames are converted to float32 into a preallocated buffer; each 256 samples
  (silero's 32 ms window at 8 kHz) are scored straight from it (the session
  copies them into the stream's bound input row).
- Optional pre-gate: ``webrtcvad`` in mode 3 (≈1 µs per frame) marks clear
  silence; a window whose frames were all silence for webrtcvad is scored 0.0 and
  silero is skipped. Used only on 10/20/30 ms frames (webrtcvad's sizes).
- End-time refinement: silero's output lags the end of speech by about 100-150 ms
  (its recurrent state smooths the posterior; measured on espeak-ng speech), and
  webrtcvad's mode 3 has its own ~100 ms overhang, so neither times the end well.
  When silero declares a silence, its start is moved back over the trailing frames
  whose energy is low relative to the recent speech (below ``_QUIET_REL`` of the
  loudest recent frame and ``_QUIET_FLOOR``× the quietest), at most
  ``_MAX_REFINE_S``. Silero still decides *that* speech ended; energy only says
  *when*. This makes ``SpeechEnded.t`` accurate and, since the hangover is counted
  from there, ends turns sooner.

The silero model is shared by every call (``engine.silero``); each detector
keeps only its stream's state.

Decision rules (per 32 ms window, probability ``p``):
- not in speech: consecutive windows with ``p >= threshold`` lasting at least
  ``min_speech_ms`` -> ``SpeechStarted(t=start of the first such window)``.
- in speech: a window with ``p < threshold - 0.15`` (silero's own hysteresis)
  starts a silence; a window with ``p >= threshold`` cancels it; once the silence
  has lasted ``hangover_ms`` -> ``SpeechEnded(t=start of the silence)``.

When the end is decided (on the frame grid, not the 32 ms window grid): the
hangover is counted from the (refined) silence start, so the end is *due* at
``silence_start + hangover`` (``end_due``), which rarely falls on a window's end.
Waiting for the next window made the decision 0-40 ms late (measured on the load
test's espeak-ng lines), and that lateness is engine overhead on every turn. So
the end is also decided at the end of every frame (20 ms granularity; 0 ms late
at real-time arrival, since refined starts fall on frame edges). Between windows
silero has not scored the newest audio, so such a decision also requires that
the audio fed since the last scored window is quiet by energy (the same quiet
level as the refinement below); if it is louder, the caller may be speaking
again and the next window's silero verdict decides, exactly as before. A window
verdict of speech still cancels a begun silence; ``SpeechEnded.t`` is the
silence start either way. (Deciding between frames, on a timer, was measured and
rejected: see actors/decoder.py.)

Time: ``feed(pcm, t)`` takes ``t`` = the clock at the END of the frame; a window's
times are derived from the frame it completes in, so uneven frame arrival (jitter)
is followed rather than accumulated. Event times (``SpeechStarted.t``,
``SpeechEnded.t``) are on that clock. Durations that decide something (the
hangover) are counted in *audio* time, the seconds of audio fed: a frame that
arrives a few ms early or late says nothing about how long the caller has been
silent. (Counted on the arrival clock, the frame that completes the hangover was
taken as short of it about half the time under load, and the end waited a frame
more: 13 ms median at 50 calls.)

Benchmark: ``python -m engine.vad --bench`` prints µs per 20 ms frame
for speech, silence and noise (not a test: timings depend on the machine).
"""

from __future__ import annotations

from collections import deque
from typing import Final

import numpy as np

from engine.messages import SpeechEnded, SpeechStarted
from engine.silero import WINDOW_SAMPLES, SileroSession, SileroStream

# The shared model (``engine.silero``) is part of this module's documented API:
# the runtime loads it from here at start-up.
__all__ = ["VoiceActivityDetector", "SileroSession", "SileroStream"]

_HYSTERESIS: Final = 0.15  # silero VADIterator: neg_threshold = threshold - 0.15
_WEBRTC_MODE: Final = 3
_INT16_SCALE: Final = np.float32(1.0 / 32768.0)
_MAX_REFINE_S: Final = 0.25  # how far back energy may move a silence start
_RECENT: Final = 24  # per-frame energies remembered (480 ms of 20 ms frames)
_QUIET_REL: Final = 0.05  # quiet: RMS below 5 % (-26 dB) of the loudest recent frame...
_QUIET_FLOOR: Final = 3.0  # ...or within 3x (+9.5 dB) of the quietest (the noise floor)
_QUIET_TARGET: Final = 0.0316  # quiet windows are lifted toward -30 dBFS before silero scores them...
_QUIET_MIN: Final = 0.0008  # ...unless below -62 dBFS (nothing there)...
_FLOOR_CEILING: Final = 0.00316  # ...and never so far that the noise floor would pass -50 dBFS
_PREGATE_RMS: Final = 0.001  # frames above -60 dBFS are scored by silero even when webrtcvad calls them silence
_FLOOR_RISE: Final = 1.01  # the floor follows quieter frames at once and louder ones at +4.3 dB/s


class VoiceActivityDetector:
    """Sans-IO speech start/end detection for one call (see the module docstring).

    Owned by the call's decoder; every method runs on the trio thread (or whatever
    single thread owns it). Not thread-safe.
    """

    __slots__ = (
        "sample_rate", "threshold", "min_speech_ms", "hangover_ms", "use_webrtc_pregate",
        "_neg_threshold", "_window", "_window_s", "_session", "stream", "_buf", "_fill",
        "_webrtc", "_gate_frame_bytes", "_window_voiced", "_in_speech", "_run_start", "_silence_start",
        "_last_end", "_closed", "_windows", "_silero_calls", "_levels", "_speech_start", "_tail_rms",
        "_audio", "_silence_audio", "_speech_start_audio", "_run_start_audio", "last_rms",
        "quiet_gain_max", "_floor",
    )

    def __init__(
        self,
        *,
        sample_rate: int = 8000,
        threshold: float = 0.5,
        min_speech_ms: int = 96,
        hangover_ms: int = 200,
        use_webrtc_pregate: bool = True,
        session: SileroSession | None = None,
        quiet_gain_max: float = 10.0,
    ) -> None:
        if sample_rate not in WINDOW_SAMPLES:
            raise ValueError(f"sample_rate must be 8000 or 16000, got {sample_rate}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be within (0, 1), got {threshold}")
        if not 0 <= min_speech_ms <= 2000:
            raise ValueError(f"min_speech_ms must be within 0..2000, got {min_speech_ms}")
        if not 0 < hangover_ms <= 5000:
            raise ValueError(f"hangover_ms must be within 1..5000, got {hangover_ms}")
        if session is not None and session.sample_rate != sample_rate:
            raise ValueError(f"session is for {session.sample_rate} Hz, detector for {sample_rate} Hz")
        self.sample_rate = sample_rate
        self.threshold = threshold
        self.min_speech_ms = min_speech_ms
        self.hangover_ms = hangover_ms
        self.use_webrtc_pregate = use_webrtc_pregate
        self._neg_threshold = max(threshold - _HYSTERESIS, 0.01)
        self._window = WINDOW_SAMPLES[sample_rate]
        self._window_s = self._window / sample_rate
        self._session = session or SileroSession.shared(sample_rate)
        self.stream = self._session.new_stream()
        # Room for one window plus the largest frame we accept in one step.
        self._buf = np.zeros(self._window * 2, dtype=np.float32)
        self._fill = 0
        self._webrtc = None
        if use_webrtc_pregate:
            import webrtcvad

            self._webrtc = webrtcvad.Vad(_WEBRTC_MODE)
        # (frame start time, frame RMS as a fraction of full scale), most recent frames.
        # (frame start time, frame RMS as a fraction of full scale, frame start in
        # audio time), most recent frames.
        self._levels: deque[tuple[float, float, float]] = deque(maxlen=_RECENT)
        # Audio time: seconds of audio fed so far. The hangover is counted in it
        # (see the module docstring), with the silence start's audio time.
        self._audio = 0.0
        self._silence_audio = 0.0
        self._speech_start_audio = 0.0
        self._run_start_audio = 0.0
        # Loudest RMS of the frames holding audio no window has scored yet (0.0: none).
        self._tail_rms = 0.0
        self.last_rms = 0.0  # RMS of the last frame fed (fraction of full scale)
        if not 1.0 <= quiet_gain_max <= 100.0:
            raise ValueError(f"quiet_gain_max must be within 1..100, got {quiet_gain_max}")
        self.quiet_gain_max = quiet_gain_max
        self._floor = -1.0  # the line's noise floor (slow minimum of frame RMS; -1: no frame yet)
        self._gate_frame_bytes = (sample_rate // 100 * 2, sample_rate // 50 * 2, sample_rate * 3 // 100 * 2)
        self._window_voiced = False  # some frame feeding the current window may be speech
        self._in_speech = False
        self._run_start: float | None = None
        self._speech_start = 0.0  # t of the last SpeechStarted
        self._silence_start: float | None = None
        self._last_end: float | None = None  # end time of the last analysed window
        self._closed = False
        self._windows = 0
        self._silero_calls = 0

    # ---------------------------------------------------------------- state

    @property
    def in_speech(self) -> bool:
        """True between a ``SpeechStarted`` and its ``SpeechEnded``."""
        return self._in_speech

    @property
    def silence_ms(self) -> float:
        """How long the current silence has lasted, up to the last analysed window (ms).

        While in speech: the silence that began inside the utterance (0.0 while the
        caller is talking). Outside speech: time since the last speech ended (or since
        the first frame). For early-finalize decisions.
        """
        if self._silence_start is None or self._last_end is None:
            return 0.0
        return max(0.0, (self._last_end - self._silence_start) * 1000.0)

    @property
    def end_due(self) -> float | None:
        """When ``SpeechEnded`` becomes due if nothing changes (``feed``'s clock), else None.

        ``silence_start + hangover`` while in speech with a silence begun; None
        otherwise (not in speech, or the caller is talking). The frame that
        completes ``hangover`` of audio after the silence start (at real-time
        arrival, the first frame that ends at or after this time) ends the speech, unless audio fed since the last
        scored window is loud (then a later frame or window decides).
        """
        start = self._silence_start
        if not self._in_speech or start is None:
            return None
        return start + self.hangover_ms / 1000.0

    @property
    def noise_floor(self) -> float:
        """The line's noise floor: a slow minimum of frame RMS (fraction of full scale; 0.0 before any frame)."""
        return max(self._floor, 0.0)

    @property
    def stats(self) -> tuple[int, int]:
        """(windows analysed, windows that reached silero) since construction."""
        return self._windows, self._silero_calls

    @property
    def session(self) -> SileroSession:
        return self._session

    # ---------------------------------------------------------------- feeding

    def feed(self, pcm16_20ms: bytes, t: float) -> list[SpeechStarted | SpeechEnded]:
        """Feed one frame of PCM16LE mono (normally 20 ms) ending at time ``t``.

        Returns the events the frame completed, in order (usually none). Raises
        ``ValueError`` for an odd byte count or after ``close``; any even length is
        accepted (a short or long frame is buffered like any other).
        """
        n_bytes = len(pcm16_20ms)
        if n_bytes & 1:
            raise ValueError(f"PCM16 frame must have an even number of bytes, got {n_bytes}")
        if self._closed:
            raise ValueError("VoiceActivityDetector is closed")
        if self._last_end is None and self._silence_start is None:
            self._silence_start = t - n_bytes / 2 / self.sample_rate
            self._silence_audio = self._audio
        samples = np.frombuffer(pcm16_20ms, dtype="<i2").astype(np.float32)
        n = samples.size
        rms = 0.0
        audio_start = self._audio
        self._audio = audio_end = audio_start + n / self.sample_rate
        if n:
            samples *= _INT16_SCALE
            rms = float(np.sqrt(np.dot(samples, samples) / n))
            self.last_rms = rms
            floor = self._floor
            self._floor = rms if (rms < floor or floor < 0.0) else floor * _FLOOR_RISE
            self._levels.append((t - n / self.sample_rate, rms, audio_start))
        if self._webrtc is None or n_bytes not in self._gate_frame_bytes:
            frame_voiced = True  # no pre-gate, or a size webrtcvad cannot judge
        else:
            # webrtcvad's mode 3 misses quiet voices (a whisper, a soft speaker): a
            # frame above _PREGATE_RMS that stands out of the line's noise floor
            # reaches silero whatever it says (steady noise still does not).
            frame_voiced = (rms > _PREGATE_RMS and rms > _QUIET_FLOOR * self._floor) or self._webrtc.is_speech(
                pcm16_20ms, self.sample_rate
            )
        self._window_voiced = self._window_voiced or frame_voiced
        events: list[SpeechStarted | SpeechEnded] = []
        window = self._window
        done = 0
        scored = self._windows
        while done < n:
            take = min(n - done, window * 2 - self._fill)
            self._buf[self._fill : self._fill + take] = samples[done : done + take]
            self._fill += take
            done += take
            while self._fill >= window:
                behind = (n - done + self._fill - window) / self.sample_rate
                self._analyse(t - behind, audio_end - behind, events)
                rest = self._fill - window
                # What is left belongs to this frame: its verdict opens the next window.
                self._window_voiced = frame_voiced and rest > 0
                if rest:
                    self._buf[:rest] = self._buf[window : self._fill]
                self._fill = rest
        if self._windows != scored:
            # Only this frame's remainder (if any) is unscored now.
            self._tail_rms = rms if self._fill else 0.0
        elif rms > self._tail_rms:
            self._tail_rms = rms
        start = self._silence_start
        if self._in_speech and start is not None:
            # Between windows too: the end is decided within a frame of being due.
            ended = self._end_if_due(start)
            if ended is not None:
                events.append(ended)
        return events

    def _end_if_due(self, start: float) -> SpeechEnded | None:
        """In speech with a silence begun at ``start`` (the caller checked): end the
        speech if the hangover has elapsed in audio time and the unscored tail is quiet."""
        if (self._audio - self._silence_audio) * 1000.0 < self.hangover_ms - 1e-6:
            return None
        if self._tail_rms > 0.0 and self._tail_rms > self._quiet_level():
            return None  # maybe speaking again: the next window's silero verdict decides
        self._in_speech = False
        return SpeechEnded(t=start)

    def _analyse(self, end: float, audio_end: float, events: list[SpeechStarted | SpeechEnded]) -> None:
        """Score the window in ``_buf[:window]`` ending at ``end`` (``audio_end`` in
        audio time); update the state."""
        self._windows += 1
        if self._window_voiced:
            window = self._buf[: self._window]
            if self.quiet_gain_max > 1.0:
                window = self._lift_quiet(window)
            p = self._session.score(self.stream, window)
            self._silero_calls += 1
        else:
            p = 0.0
        start = end - self._window_s
        audio_start = audio_end - self._window_s
        self._last_end = end
        if not self._in_speech:
            if p >= self.threshold:
                if self._run_start is None:
                    self._run_start = start
                    self._run_start_audio = audio_start
                if (end - self._run_start) * 1000.0 >= self.min_speech_ms - 1e-6:
                    self._in_speech = True
                    self._speech_start = self._run_start
                    self._speech_start_audio = self._run_start_audio
                    self._silence_start = None
                    events.append(SpeechStarted(t=self._run_start))
                    self._run_start = None
            else:
                self._run_start = None
            return
        if p >= self.threshold:
            self._silence_start = None
        elif p < self._neg_threshold and self._silence_start is None:
            self._silence_start, self._silence_audio = self._refine_silence_start(start, audio_start)
        if self._silence_start is not None and (audio_end - self._silence_audio) * 1000.0 >= self.hangover_ms - 1e-6:
            self._in_speech = False
            events.append(SpeechEnded(t=self._silence_start))

    def _lift_quiet(self, window: np.ndarray) -> np.ndarray:
        """``window``, raised toward ``_QUIET_TARGET`` when it is quiet and the line's
        noise floor is low enough that the gain cannot make the floor sound like
        speech (see the module docstring); else ``window`` itself."""
        level = float(np.sqrt(np.dot(window, window) / window.size))
        if level >= _QUIET_TARGET or level <= _QUIET_MIN:
            return window
        # The gain follows the speaker, not the window: the loudest recent frame is
        # raised to the target, so a pause keeps its level relative to the words
        # around it (a per-window gain made silero end turns at commas).
        peak = max(level, max(rms for _, rms, _ in self._levels) if self._levels else 0.0)
        floor = max(self._floor, 1e-6)
        gain = min(self.quiet_gain_max, _QUIET_TARGET / peak, _FLOOR_CEILING / floor)
        if gain <= 1.0:
            return window
        window *= np.float32(gain)  # in place: these samples are not read again, except as silero's context
        return window

    def _quiet_level(self) -> float:
        """The RMS at or below which a frame counts as quiet: below ``_QUIET_REL`` of the
        loudest recent frame or within ``_QUIET_FLOOR``x of the quietest (0.0: no frames)."""
        if not self._levels:
            return 0.0
        levels = [rms for _, rms, _ in self._levels]
        return max(_QUIET_REL * max(levels), _QUIET_FLOOR * min(levels))

    def _refine_silence_start(self, start: float, audio_start: float) -> tuple[float, float]:
        """Move ``start`` (``audio_start`` in audio time) back over the trailing quiet
        frames (bounded; see the module doc). Returns both times."""
        if not self._levels:
            return start, audio_start
        quiet = self._quiet_level()
        earliest = None
        for frame_start, rms, frame_audio in reversed(self._levels):
            if rms > quiet:
                break
            earliest = (frame_start, frame_audio)
        if earliest is None or earliest[1] >= audio_start:
            return start, audio_start
        # The bounds, in audio time (where the audio is): at most _MAX_REFINE_S back,
        # and not before the speech began.
        back = max(audio_start - earliest[1], 0.0)
        back = min(back, _MAX_REFINE_S, max(audio_start - self._speech_start_audio, 0.0))
        return start - back, audio_start - back

    # ---------------------------------------------------------------- lifecycle

    def reset(self) -> None:
        """Forget all audio and state (the model's recurrent state too)."""
        self.stream.reset()
        self._fill = 0
        self._levels.clear()
        self._tail_rms = 0.0
        self._floor = -1.0
        self._audio = self._silence_audio = self._speech_start_audio = self._run_start_audio = 0.0
        self._window_voiced = False
        self._in_speech = False
        self._run_start = self._silence_start = self._last_end = None

    def close(self) -> None:
        """End the detector: later feeds raise. Idempotent; never raises (the shared
        session stays loaded for other calls)."""
        self._closed = True


# -------------------------------------------------------------------- benchmark


def _bench(seconds: float = 20.0) -> None:  # pragma: no cover - manual tool
    """Report µs per 20 ms frame for synthetic speech, silence and noise."""
    import subprocess
    import time

    from engine.audio import resample_pcm16, strip_wav_header

    text = "Hello, I have a leaking pipe in the kitchen and I need a plumber as soon as possible."
    raw = subprocess.run(["espeak-ng", "--stdout", "-v", "en-us", "--", text], capture_output=True, check=True).stdout
    pcm, info = strip_wav_header(raw)
    speech = resample_pcm16(pcm, info.get("rate", 22050), 8000)
    rng = np.random.default_rng(1)
    n = int(seconds * 8000)
    cases = {
        "speech": (speech * (n * 2 // len(speech) + 1))[: n * 2],
        "silence": bytes(n * 2),
        "noise": (rng.normal(0, 300, n)).astype("<i2").tobytes(),
    }
    SileroSession.shared(8000)
    for gate in (True, False):
        for name, audio in cases.items():
            vad = VoiceActivityDetector(use_webrtc_pregate=gate)
            frames_ = [audio[i : i + 320] for i in range(0, len(audio) - 319, 320)]
            t0 = time.perf_counter()
            for i, f in enumerate(frames_):
                vad.feed(f, (i + 1) * 0.02)
            dt = time.perf_counter() - t0
            windows, calls = vad.stats
            vad.close()
            print(
                f"pregate={'on ' if gate else 'off'} {name:8s} {dt / len(frames_) * 1e6:7.1f} µs/frame "
                f"({len(frames_)} frames, silero on {calls}/{windows} windows)"
            )


if __name__ == "__main__":  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(description="silero + webrtcvad voice activity detector")
    parser.add_argument("--bench", action="store_true", help="report µs per 20 ms frame")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    if args.bench:
        _bench(args.seconds)
    else:
        parser.print_help()

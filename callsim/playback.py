"""What the simulated caller hears: the playback buffer and a line's frames.

:class:`Playback` is the caller's jitter buffer (agent audio and marks in arrival
order, drained one 20 ms frame per tick by the caller's clock); :func:`line_frames`
cuts a script line into frames once per process and finds where its speech is.
"""

from __future__ import annotations

import collections
import functools

from engine.audio import frames, rms_pcm16, ulaw_decode
from transports.twilio import Mark

__all__ = ["FRAME_BYTES", "Playback", "line_frames"]

FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
_VOICED_RMS = 100.0  # PCM16 RMS (about -50 dBFS) above which a frame counts as speech


class Playback:
    """The caller's jitter buffer: audio and marks in arrival order (caller's trio thread)."""

    __slots__ = ("items", "audio_bytes", "in_utterance", "gap_ticks", "utterance_start_ms", "last_heard_end_ms")

    def __init__(self) -> None:
        self.items: collections.deque[bytes | Mark] = collections.deque()
        self.audio_bytes = 0
        self.in_utterance = False
        self.gap_ticks = 0
        self.utterance_start_ms: float | None = None
        self.last_heard_end_ms: float | None = None

    @property
    def empty(self) -> bool:
        return not self.items


@functools.lru_cache(maxsize=64)
def line_frames(audio: bytes) -> tuple[tuple[bytes, ...], int, int]:
    """A line cut into 20 ms frames, and its first and last voiced frame (the whole
    line when none is voiced). Cached: the load tester gives every caller the same
    ``bytes`` objects, so each line is decoded and measured once per process."""
    line = tuple(frames(audio, FRAME_BYTES))
    voiced = [i for i, f in enumerate(line) if rms_pcm16(ulaw_decode(f)) >= _VOICED_RMS]
    if voiced:
        return line, voiced[0], voiced[-1]
    return line, 0, len(line) - 1

"""The agent's own voice coming back down the line (echo), told apart from the caller's.

A phone line can return the audio we send: a hybrid or a speakerphone puts the
agent's voice, attenuated and delayed (tens to hundreds of ms), into the caller's
audio. The VAD hears it as speech; if that counted as the caller, the agent would
interrupt itself (barge-in) or answer its own words. There is no echo canceller
here; a level gate is enough to decide *whose* speech it is:

- :class:`EchoReference` — the pacer notes the level (RMS) of each frame it sends;
  the decoder takes the loudest noted since its previous frame. One per call,
  both on the trio thread; two floats of state, no lock.
- :class:`EchoGate` — per caller frame, the loudest agent frame sent within the
  last ``window_frames`` (800 ms by default: send lead + network + echo path) is
  what echo could bring back, at most ``ratio`` times as loud. A caller frame
  louder than ``margin`` × ``ratio`` × that level is not explained by echo: it is
  the caller's own voice. ``ratio`` (the echo path's gain) is learnt on the line:
  the 90th percentile of (caller level / agent level) over the frames while the
  caller is not confirmed speaking (the greeting trains it), within
  [``min_ratio``, ``max_ratio``]. Starting at ``initial_ratio`` (-12 dB), so an
  untrained gate needs the caller within 6 dB of the agent's recent peak; on a
  line without echo it falls to ``min_ratio`` within a second of agent audio.

When no agent audio was sent within the window, nothing can be echo: the gate
says so (``frame`` returns None) and the decoder treats speech as the caller's at
once, so barge-in and turns on a quiet line are exactly as fast as without it.

Per frame: one ``max`` over ``window_frames`` floats and, every ``_ADAPT_EVERY``
frames with agent audio around, one percentile over ``adapt_frames`` floats.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from engine.audio import ULAW_TO_PCM16

__all__ = ["EchoReference", "EchoGate", "mulaw_rms"]

_ULAW_SQ = (ULAW_TO_PCM16.astype(np.float64) / 32768.0) ** 2
_ADAPT_EVERY = 10
_ADAPT_MIN = 25  # frames of evidence before the learnt ratio replaces the initial one


def mulaw_rms(frame: bytes) -> float:
    """RMS of μ-law audio as a fraction of full scale (as the VAD measures frames; 0.0 for none)."""
    if not frame:
        return 0.0
    return float(np.sqrt(_ULAW_SQ[np.frombuffer(frame, dtype=np.uint8)].mean()))


class EchoReference:
    """The agent's outbound level: written per frame sent (pacer), taken per frame received (decoder)."""

    __slots__ = ("_peak", "frames")

    def __init__(self) -> None:
        self._peak = 0.0
        self.frames = 0  # frames noted, over the call

    def note(self, mulaw_frame: bytes) -> None:
        rms = mulaw_rms(mulaw_frame)
        if rms > self._peak:
            self._peak = rms
        self.frames += 1

    def take(self) -> float:
        """The loudest frame noted since the last ``take`` (0.0: none), and forget it."""
        peak, self._peak = self._peak, 0.0
        return peak


class EchoGate:
    """Whether caller frames are louder than echo of the agent's audio can explain
    (see the module docstring). One per call, fed every caller frame, in order."""

    __slots__ = ("margin", "min_ratio", "max_ratio", "ratio", "_ref", "_ratios", "_since_adapt", "_active")

    def __init__(
        self,
        *,
        window_frames: int = 40,
        initial_ratio: float = 0.25,
        min_ratio: float = 0.03,
        max_ratio: float = 0.5,
        margin: float = 2.0,
        adapt_frames: int = 150,
    ) -> None:
        if window_frames < 1 or adapt_frames < _ADAPT_MIN:
            raise ValueError("window_frames must be >= 1 and adapt_frames >= 25")
        if not 0.0 < min_ratio <= initial_ratio <= max_ratio or margin < 1.0:
            raise ValueError("need 0 < min_ratio <= initial_ratio <= max_ratio and margin >= 1")
        self.margin = margin
        self.min_ratio = min_ratio
        self.max_ratio = max_ratio
        self.ratio = initial_ratio
        self._ref: deque[float] = deque([0.0] * window_frames, maxlen=window_frames)
        self._ratios: deque[float] = deque(maxlen=adapt_frames)
        self._since_adapt = 0
        self._active = 0  # frames left in the window since the last agent frame

    @property
    def active(self) -> bool:
        """Agent audio was sent within the window: caller speech may be echo."""
        return self._active > 0

    def frame(self, agent_peak: float, caller_rms: float, caller_speaking: bool) -> bool | None:
        """One caller frame: ``agent_peak`` from ``EchoReference.take``, the frame's
        RMS, and whether the caller is known to be speaking (then the frame does not
        train the ratio). Returns None when no agent audio is within the window,
        True when the frame is louder than echo explains, False when echo explains it."""
        ref = self._ref
        ref.append(agent_peak)
        if agent_peak > 0.0:
            self._active = ref.maxlen or 0
        elif self._active:
            self._active -= 1
        if not self._active:
            return None
        level = max(ref)
        if level <= 0.0:
            return None
        r = caller_rms / level
        if not caller_speaking:
            self._ratios.append(r)
            self._since_adapt += 1
            if self._since_adapt >= _ADAPT_EVERY and len(self._ratios) >= _ADAPT_MIN:
                self._since_adapt = 0
                learnt = float(np.quantile(np.fromiter(self._ratios, dtype=np.float64), 0.9))
                self.ratio = min(max(learnt, self.min_ratio), self.max_ratio)
        return r > self.ratio * self.margin

"""The simulated caller's script and what one call measured.

A script is a sequence of steps (:class:`Say`, :class:`Pause`,
:class:`WaitForReply`, :class:`BargeIn`, :class:`PressKey`) that
:class:`callsim.caller.SimulatedCaller` plays in order; the caller fills a
:class:`CallResult` with one :class:`Turn` per line spoken. Plain data: steps are
frozen and checked at construction, so a bad script fails before any call starts.
Timing convention: every ``*_ms`` field is milliseconds since ``start`` was sent.
"""

from __future__ import annotations

import collections
import secrets
from dataclasses import dataclass, field
from typing import Union

__all__ = [
    "Say",
    "Pause",
    "WaitForReply",
    "BargeIn",
    "PressKey",
    "Step",
    "Turn",
    "CallResult",
    "new_call_sid",
    "new_stream_sid",
]


@dataclass(frozen=True, slots=True)
class Say:
    """Speak a line: ``text`` (synthesized with espeak-ng) or ``audio`` (8 kHz μ-law)."""

    text: str | None = None
    audio: bytes | None = None
    voice: str = "en-us"
    rate_wpm: int = 160

    def __post_init__(self) -> None:
        if (self.text is None) == (self.audio is None):
            raise ValueError("Say needs exactly one of text= or audio=")
        if self.audio is not None and not self.audio:
            raise ValueError("Say audio is empty")


@dataclass(frozen=True, slots=True)
class Pause:
    """Stay silent (silence frames keep flowing) for ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class WaitForReply:
    """Wait until agent audio arrived after our last speech and playback finished
    (buffer empty for the caller's ``settle`` gap). ``timeout`` bounds the wait for
    the reply's first frame; hearing it out is bounded by ``max_reply_s``."""

    timeout: float = 10.0
    max_reply_s: float = 60.0


@dataclass(frozen=True, slots=True)
class BargeIn:
    """Wait until agent audio is playing (after our last speech), let ``after_ms``
    of it play, then speak over it."""

    after_ms: int = 300
    text: str | None = None
    audio: bytes | None = None
    voice: str = "en-us"
    rate_wpm: int = 160
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if (self.text is None) == (self.audio is None):
            raise ValueError("BargeIn needs exactly one of text= or audio=")


@dataclass(frozen=True, slots=True)
class PressKey:
    """Send a DTMF digit."""

    digit: str


Step = Union[Say, Pause, WaitForReply, BargeIn, PressKey]


# ------------------------------------------------------------------ results


@dataclass(slots=True)
class Turn:
    """One caller utterance and the agent's answer to it (times in ms since start)."""

    index: int
    label: str
    barge_in: bool = False
    speech_start_ms: float | None = None
    speech_end_ms: float | None = None
    reply_first_frame_ms: float | None = None
    clear_ms: float | None = None  # barge-in turns: from our speech start to the agent's clear

    @property
    def reply_latency_ms(self) -> float | None:
        """``reply_first_frame_ms - speech_end_ms`` (None until both are known)."""
        if self.reply_first_frame_ms is None or self.speech_end_ms is None:
            return None
        return self.reply_first_frame_ms - self.speech_end_ms


@dataclass(slots=True)
class CallResult:
    """Everything one simulated call measured. Filled by the caller's tasks; read it
    after ``SimulatedCaller.run()`` returns."""

    call_sid: str
    stream_sid: str
    connected: bool = False
    greeting_first_frame_ms: float | None = None
    turns: list[Turn] = field(default_factory=list)
    received_audio: bytearray = field(default_factory=bytearray)  # agent audio, as received
    received_bytes: int = 0
    heard_bytes: int = 0
    marks_received: int = 0
    marks_echoed: list[tuple[str, float]] = field(default_factory=list)  # (name, ms)
    clears_received: list[float] = field(default_factory=list)  # ms of each clear
    underruns: int = 0
    violations: collections.Counter = field(default_factory=collections.Counter)
    frames_sent: int = 0
    late_frames: int = 0
    dtmf_sent: int = 0
    duration_ms: float = 0.0
    closed_by_server: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Connected, ran the script to its end, and nothing timed out or failed
        (a hang-up by the server before the caller's ``stop`` is an error)."""
        return self.connected and not self.errors

    @property
    def received_seconds(self) -> float:
        return self.received_bytes / 8000.0


def new_call_sid() -> str:
    """A Twilio-shaped Call SID: ``CA`` + 32 hex digits."""
    return "CA" + secrets.token_hex(16)


def new_stream_sid() -> str:
    """A Twilio-shaped Stream SID: ``MZ`` + 32 hex digits."""
    return "MZ" + secrets.token_hex(16)


# ------------------------------------------------------------------ the WebSocket

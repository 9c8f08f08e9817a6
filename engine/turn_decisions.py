"""The turn-taker's vocabulary: its settings, the caller's turn, the ticks it is fed, the decisions it returns.

Plain data, shared by ``engine.turn_taking`` (which makes the decisions) and the
planner (which turns each into messages), so neither holds the other's state:
a decision carries everything needed to act on it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = [
    "TurnSettings",
    "CallerTurn",
    "Tick",
    "Decision",
    "StartReply",
    "Speculate",
    "KeepSpeculation",
    "DropSpeculation",
    "CancelReply",
    "StopPlayback",
    "AmendTranscript",
]


@dataclasses.dataclass
class TurnSettings:
    early_finalize: bool = True
    early_punct_min_chars: int = 12
    early_stable_min_chars: int = 18
    stable_ms: int = 250
    speculative: bool = True
    speculative_min_chars: int = 14
    final_timeout_ms: int = 1500
    batch_final_timeout_ms: int = 6000  # recognizers without partials (whisper)
    resume_window_ms: int = 300  # caller speech this soon after a reply's first frame (too soon to be an answer to it) continues the turn
    unfinished_hold_ms: int = 700  # silence (from the speech's end) an unfinished-looking turn waits for


@dataclasses.dataclass(frozen=True, slots=True)
class Tick:
    """Time passed (the planner's 50 ms ticker while a turn is open)."""


@dataclasses.dataclass
class CallerTurn:
    """What the caller said in one turn, and when (``now`` times, except
    ``speech_start``/``speech_end``, which are the decoder's audio times)."""

    speech_start: float
    speech_end: float | None = None
    speech_end_seen: float | None = None  # when the SpeechEnded was handled
    finals: list[str] = dataclasses.field(default_factory=list)
    partial: str = ""
    partial_changed_at: float = 0.0
    first_partial: float | None = None
    last_final: float | None = None  # when the latest final was handled
    last_final_seen: float = -1.0
    last_end_seq: int = 0  # the seq of the latest stretch's end (batch recognizers' finals name it)
    final_upto: int = 0  # the latest stretch end a final said it transcribes
    last_start_seen: float = 0.0  # when the latest stretch's start was handled
    dtmf: str = ""
    stretches: int = 0  # stretches of the caller's speech in this turn
    resumed: int = 0  # times the caller went on after the turn had ended

    def text(self, with_partial: bool = True) -> str:
        parts = list(self.finals)
        if with_partial and self.partial:
            parts.append(self.partial)
        return " ".join(p.strip() for p in parts if p.strip())


# ---------------------------------------------------------------- decisions


@dataclasses.dataclass(frozen=True, slots=True)
class StartReply:
    """The turn ended: generate the reply to ``text`` as turn ``turn_id``."""

    turn_id: int
    text: str
    turn: CallerTurn


@dataclasses.dataclass(frozen=True, slots=True)
class Speculate:
    """Start a reply to ``text`` with its output held back (``key`` names it)."""

    key: int
    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class KeepSpeculation:
    """The turn ended with the speculated words: release it as turn ``turn_id``."""

    key: int
    turn_id: int
    text: str
    turn: CallerTurn


@dataclasses.dataclass(frozen=True, slots=True)
class DropSpeculation:
    key: int


@dataclasses.dataclass(frozen=True, slots=True)
class CancelReply:
    """Cancel turn ``turn_id``'s reply and forget it (no record: it was not
    heard, and its turn goes on or is answered again)."""

    turn_id: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class StopPlayback:
    """Stop the agent's audio now (the pacer reports what it cleared)."""

    t: float
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class AmendTranscript:
    """Turn ``turn_id``'s reply was heard; its record keeps all the caller said."""

    turn_id: int
    text: str


Decision = Any

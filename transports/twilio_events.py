"""The Twilio Media Streams vocabulary: stream states, events, violation kinds, limits.

What both ends of the protocol (``transports.twilio``, ``transports.twilio_caller``)
produce and the rest of the engine consumes: frozen event objects with the
engine's names, never Twilio's field names. Pure data, no I/O, so any loop and
any test can hold them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

__all__ = [
    "State",
    "LocalProtocolError",
    "Connected",
    "Start",
    "Media",
    "Dtmf",
    "Mark",
    "Stop",
    "Clear",
    "ProtocolViolation",
    "Event",
    "VIOLATION_KINDS",
    "MAX_PAYLOAD_BYTES",
]

#: Largest decoded media payload accepted (Twilio sends 160 bytes = 20 ms).
MAX_PAYLOAD_BYTES = 64 * 1024

#: Every kind a :class:`ProtocolViolation` can carry.
VIOLATION_KINDS = (
    "not_json",  # not UTF-8 JSON, or not a JSON object
    "oversized",  # text longer than max_message_bytes
    "unknown_event",  # "event" names nothing this end receives
    "before_start",  # media/dtmf/mark/stop before start
    "after_stop",  # anything after stop
    "bad_base64",  # media payload is not strict base64
    "odd_payload",  # payload empty, over MAX_PAYLOAD_BYTES, or not whole samples
    "missing_field",  # a required field is absent or has the wrong type
    "bad_number",  # a number that is not finite, not whole, or out of range (1e999, NaN, -5)
    "wrong_stream_sid",  # streamSid differs from the one in start
    "binary_frame",  # a binary WebSocket message (Twilio only sends text)
    "duplicate_start",  # a second start on one stream
)


class State(enum.Enum):
    """Lifecycle of one stream: AWAITING_START -> STREAMING -> STOPPED."""

    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    STOPPED = "stopped"


class LocalProtocolError(RuntimeError):
    """Our own code misused the protocol object (e.g. sent media while not streaming)."""




@dataclass(frozen=True, slots=True)
class Connected:
    """Twilio opened the stream (``connected``); carries the protocol version."""

    protocol: str = ""
    version: str = ""


@dataclass(frozen=True, slots=True)
class Start:
    """The stream's metadata (``start``): from here on media flows."""

    call_sid: str
    stream_sid: str
    account_sid: str = ""
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    media_format: Mapping[str, Any] = field(default_factory=dict)
    tracks: tuple[str, ...] = ("inbound",)


@dataclass(frozen=True, slots=True)
class Media:
    """One chunk of audio (raw μ-law bytes, already base64-decoded)."""

    payload: bytes
    timestamp_ms: int = 0
    chunk: int = 0
    track: str = "inbound"


@dataclass(frozen=True, slots=True)
class Dtmf:
    """The caller pressed a key."""

    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    """A mark: received by the server, playback reached a mark we sent;
    received by the caller side, the server placed a mark in its audio."""

    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    """The stream ended (the caller hung up or the call was redirected)."""

    call_sid: str


@dataclass(frozen=True, slots=True)
class Clear:
    """(Caller side only) the server asked to drop all buffered audio."""


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer sent something invalid; it was dropped and counted."""

    kind: str
    detail: str


Event = Union[Connected, Start, Media, Dtmf, Mark, Stop, Clear, ProtocolViolation]

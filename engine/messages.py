"""Every message that crosses an actor boundary, defined in one place.

Messages are frozen, slotted dataclasses: immutable (safe to hand from a trio task
to a pykka thread without copying), cheap to allocate, and comparable in tests.
Audio travels as ``bytes``; never as numpy arrays, which are mutable.

Naming: a message is named for what happened (``SpeechStarted``) or for what is
asked (``Speak``), never for who sends it, so a restarted or substituted actor
(for instance the fallback STT) sends and receives exactly the same vocabulary.

Groups, in the order audio flows through a call::

    transport -> decoder      CallerFrame, DtmfPressed, MarkEchoed
    decoder   -> stt          AudioChunk, UtteranceEnded
    decoder   -> planner/pacer SpeechStarted, SpeechEnded
    stt       -> planner      Transcript
    planner   -> tts          Speak
    tts       -> pacer        AgentAudio
    pacer     -> transport    OutboundMedia, OutboundMark, OutboundClear
    pacer     -> planner      PlaybackMarked, PlaybackCleared
    anyone    -> recorder     Record*
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = [
    "CallInfo",
    "CallerFrame",
    "DtmfPressed",
    "MarkEchoed",
    "AudioChunk",
    "UtteranceEnded",
    "SpeechStarted",
    "SpeechEnded",
    "SpeechConfirmed",
    "ClearPlayback",
    "Transcript",
    "CancelToken",
    "TextDelta",
    "LeadCaptured",
    "EndCall",
    "Speak",
    "AgentAudio",
    "OutboundMedia",
    "OutboundMark",
    "OutboundClear",
    "PlaybackMarked",
    "PlaybackCleared",
    "Hangup",
    "ReplyStamp",
    "ReplyDone",
    "SessionFailed",
    "RecordCallStarted",
    "RecordCallEnded",
    "RecordTurn",
    "RecordLead",
    "RecordChatMessage",
    "ChatInbound",
    "FlushJournal",
    "EndCallAfter",
]


# ---------------------------------------------------------------- call identity


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What a call tree knows about its call, fixed at the Twilio ``start`` event."""

    call_sid: str
    stream_sid: str
    business_id: str
    from_number: str = ""
    to_number: str = ""
    custom: Mapping[str, str] = field(default_factory=dict)
    started_at: float = 0.0  # wall clock (time.time()) of the start event
    connected_at: float = 0.0  # time.monotonic() of the WebSocket accept
    start_event_at: float = 0.0  # time.monotonic() when the Twilio start event was read


# ------------------------------------------------------ transport -> decoder


@dataclass(frozen=True, slots=True)
class CallerFrame:
    """One inbound media payload: raw μ-law bytes, usually 160 (20 ms at 8 kHz)."""

    mulaw: bytes
    t: float  # time.monotonic() when the frame was read off the socket


@dataclass(frozen=True, slots=True)
class DtmfPressed:
    digit: str
    t: float


@dataclass(frozen=True, slots=True)
class MarkEchoed:
    """Twilio echoed a mark we sent: the caller has heard audio up to it."""

    name: str
    t: float


# ----------------------------------------------------------- decoder -> stt


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """A 40-100 ms batch of caller audio: 8 kHz mono PCM16 little-endian."""

    pcm16: bytes
    t: float  # time.monotonic() at the end of the chunk
    in_speech: bool = True
    seq: int = 0  # per call, increasing; lets a restarted STT skip what it replayed


@dataclass(frozen=True, slots=True)
class UtteranceEnded:
    """VAD hangover elapsed: the caller stopped speaking (utterance boundary)."""

    t: float
    seq: int = 0


# ------------------------------------------------- decoder -> planner/pacer


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech began at ``t``. ``echo``: it began while the agent's own audio may be
    coming back down the line and is not yet known to be the caller's; a
    ``SpeechConfirmed`` follows if it turns out to be (else its ``SpeechEnded``
    has ``echo`` set too)."""

    t: float
    echo: bool = False


@dataclass(frozen=True, slots=True)
class SpeechConfirmed:
    """Speech that began as ``echo`` (``t``: when it began) is the caller's own:
    enough of it is louder than the agent's audio coming back can explain."""

    t: float


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """Silence began (``t`` is its start; the hangover has already elapsed).
    ``echo``: the speech that ended was never confirmed as the caller's."""

    t: float
    echo: bool = False
    seq: int = 0  # the seq of the UtteranceEnded the STT got at the same moment (0: none)


# ----------------------------------------------------------- stt -> planner


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    is_final: bool
    t: float  # time.monotonic() when produced
    stability: float = 0.0
    confidence: float = 0.0
    utterance: int = 0  # counter of utterances within the session
    upto_seq: int = 0  # a batch recognizer's final: the seq of the UtteranceEnded it transcribes (0: unknown)


# ------------------------------------------------------- planner -> tts etc.


class CancelToken:
    """A one-way cancellation flag readable from any thread.

    Created by the planner for each agent reply and carried inside every
    message of that reply, so a blocked TTS or LLM thread can notice a barge-in
    without waiting for its mailbox. Setting is idempotent and thread-safe.
    """

    __slots__ = ("_event", "reason")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str = "cancelled") -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __repr__(self) -> str:
        return f"CancelToken(cancelled={self.cancelled})"


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the agent's reply as a planner streams it."""

    text: str


@dataclass(frozen=True, slots=True)
class LeadCaptured:
    """The planner collected (part of) a lead: field name -> value."""

    fields: Mapping[str, str]
    complete: bool = False


@dataclass(frozen=True, slots=True)
class EndCall:
    """The planner decided the conversation is over (after its goodbye is spoken)."""

    reason: str = "goodbye"


@dataclass(frozen=True, slots=True)
class Speak:
    """Synthesize one sentence of a reply. ``last`` closes the utterance."""

    turn_id: int
    seq: int
    text: str
    last: bool
    cancel: CancelToken
    language: str = "en-US"
    voice: str = ""


@dataclass(frozen=True, slots=True)
class AgentAudio:
    """Synthesized μ-law 8 kHz audio for one reply, any length."""

    turn_id: int
    mulaw: bytes
    last: bool
    t: float = 0.0


# -------------------------------------------------------- pacer -> transport


@dataclass(frozen=True, slots=True)
class OutboundMedia:
    mulaw: bytes  # exactly 160 bytes (20 ms)


@dataclass(frozen=True, slots=True)
class OutboundMark:
    name: str


@dataclass(frozen=True, slots=True)
class OutboundClear:
    pass


@dataclass(frozen=True, slots=True)
class ClearPlayback:
    """planner -> pacer: the caller spoke over the agent; drop its queued audio,
    send ``clear``, and report each cleared reply (``PlaybackCleared``). With
    ``turn_id``: only that reply was cancelled; its audio, queued or still to
    come, is never played (``clear`` only if some of it was out)."""

    t: float
    turn_id: int = -1


@dataclass(frozen=True, slots=True)
class Hangup:
    """Close the call from our side (goodbye said, or the tree is giving up)."""

    reason: str


# ---------------------------------------------------------- pacer -> planner


@dataclass(frozen=True, slots=True)
class PlaybackMarked:
    """An agent utterance finished playing at the caller (mark echoed)."""

    turn_id: int
    t: float


@dataclass(frozen=True, slots=True)
class PlaybackCleared:
    """Agent audio was cleared because the caller spoke over it."""

    turn_id: int
    t: float


@dataclass(frozen=True, slots=True)
class ReplyStamp:
    """A latency stamp for one turn, taken where it happened (any thread)."""

    turn_id: int
    name: str
    t: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class ReplyDone:
    """The planner's generation for a turn finished (or was cancelled)."""

    turn_id: int
    text: str
    cancelled: bool


@dataclass(frozen=True, slots=True)
class SessionFailed:
    """A provider session died on another thread; its owner fails on purpose."""

    error: BaseException


# ------------------------------------------------------------ recorder


@dataclass(frozen=True, slots=True)
class RecordCallStarted:
    call_sid: str
    stream_sid: str
    business_id: str
    from_number: str
    to_number: str
    started_at: float  # wall clock


@dataclass(frozen=True, slots=True)
class RecordCallEnded:
    call_sid: str
    ended_at: float
    reason: str
    summary: str = ""


@dataclass(frozen=True, slots=True)
class RecordTurn:
    call_sid: str
    turn_index: int
    transcript: str
    reply: str
    interrupted: bool
    stamps: Mapping[str, float]
    dtmf: str = ""


@dataclass(frozen=True, slots=True)
class RecordLead:
    business_id: str
    source: str  # "call" | "whatsapp"
    ref: str  # call_sid or chat id
    fields: Mapping[str, str]
    complete: bool


@dataclass(frozen=True, slots=True)
class RecordChatMessage:
    chat_id: str
    business_id: str
    message_id: str
    direction: str  # "in" | "out"
    text: str
    at: float


# ------------------------------------------------------------ WhatsApp


@dataclass(frozen=True, slots=True)
class ChatInbound:
    """A durable inbound WhatsApp text, delivered to its chat's tree."""

    chat_id: str
    business_id: str
    message_id: str
    text: str
    received_at: float  # wall clock when the webhook received it
    channel: str  # "baileys" | "cloud"
    reply_to: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FlushJournal:
    """Tick for the recorder: try to move journaled records into the store."""


@dataclass(frozen=True, slots=True)
class EndCallAfter:
    """The reply for ``turn_id`` ends the call once the caller has heard it."""

    turn_id: int

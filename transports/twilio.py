"""Twilio Media Streams wire protocol, sans-IO (in the manner of h11).

A bidirectional ``<Connect><Stream>`` call is one WebSocket on which Twilio sends
JSON text messages (``connected``, ``start``, ``media``, ``dtmf``, ``mark``,
``stop``) and accepts ``media``, ``mark`` and ``clear`` from us. This module turns
those texts into frozen event objects and back, and nothing else: it imports no
trio, no websocket library and no audio codec, so it is tested with recorded
message fixtures and runs the same under any I/O loop. Twilio's field names
(``streamSid``, ``customParameters``, ``payload``, ...) appear only here; the rest of
the engine sees :class:`Start`, :class:`Media` and friends.

Two protocol objects, one per end of the socket:

* :class:`TwilioStream` is our (the server's) end: it parses what Twilio sends and
  serializes what we send. The transport actor owns exactly one per call and feeds
  it every WebSocket message from its single read loop.
* :class:`CallerSideStream` is Twilio's end, used by the simulated caller
  (``callsim/caller.py``) and by tests: it serializes what Twilio sends and parses
  what the engine sends.

Peer errors vs local errors (as in h11): bad input from the peer never raises from
``receive``; it becomes a :class:`ProtocolViolation` event, is counted in
``violations`` (a ``collections.Counter`` keyed by kind), and leaves the state
exactly as it was, so one malformed frame never ends a call. Misusing the API
locally (sending media before ``start`` or after ``stop``) raises
:class:`LocalProtocolError`: that is a bug in our code, not in the peer's.

Threading: these objects are not thread-safe and need not be; each is owned by one
task (the call's transport task, or the simulated caller's task set, which runs on
one trio thread). Every method is synchronous and non-blocking.

Performance: ``receive`` of a media message is one ``json.loads`` and one
``a2b_base64``; ``media()`` is a string concatenation around a precomputed prefix
holding the ``streamSid`` (no ``json.dumps`` per frame). Rejected: a dict built and
``json.dumps``-ed per outbound frame (about 3x slower), and pydantic-style models.
"""

from __future__ import annotations

import binascii
import collections
import enum
import json
import math
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
    "TwilioStream",
    "CallerSideStream",
    "VIOLATION_KINDS",
    "MAX_PAYLOAD_BYTES",
    "MAX_WIRE_INT",
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


# ------------------------------------------------------------------ events


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


class _Violation(Exception):
    """Internal: raised during parsing, turned into a ProtocolViolation event."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail


# ------------------------------------------------------------------ shared parsing helpers


def _load(text: str | bytes | bytearray | memoryview, max_bytes: int) -> dict:
    """Parse one WebSocket message into a JSON object, or raise _Violation."""
    if not isinstance(text, str):
        raise _Violation("binary_frame", f"binary message of {len(text)} bytes")
    # len(str) <= UTF-8 length <= 4 * len(str): only encode when it could matter.
    if len(text) > max_bytes or (len(text) * 4 > max_bytes and len(text.encode("utf-8", "surrogatepass")) > max_bytes):
        raise _Violation("oversized", f"message over {max_bytes} bytes")
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _Violation("not_json", f"{type(exc).__name__}: {str(exc)[:80]}") from None
    if not isinstance(msg, dict):
        raise _Violation("not_json", f"JSON {type(msg).__name__}, not an object")
    return msg


def _str_field(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise _Violation("missing_field", f"{where}.{key} missing or not a non-empty string")
    return value


def _obj_field(obj: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise _Violation("missing_field", f"{where}.{key} missing or not an object")
    return value


#: Largest counter accepted from the wire (timestamps in ms, chunk numbers):
#: 2**53, the largest integer every JSON implementation holds exactly (285,000
#: years of audio in milliseconds).
MAX_WIRE_INT = 1 << 53


def _int_field(obj: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    """``obj[key]`` as a whole number in ``0..MAX_WIRE_INT``. Twilio sends numbers
    as strings ("20"); a JSON number is accepted when whole. Anything else (a
    non-finite float such as ``1e999`` or ``NaN``, a fraction, a negative or huge
    value, a string of 5,000 digits) is a ``bad_number`` violation, a value
    that is no number at all ``missing_field``: never an ``OverflowError`` out
    of ``int()``."""
    value = obj.get(key)
    if value is None and default is not None:
        return default
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()):
            raise _Violation("missing_field", f"{where}.{key} is not an integer: {value[:24]!r}")
        if len(text) > 16:
            raise _Violation("bad_number", f"{where}.{key} out of range: {text[:24]}...")
        number = int(text)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise _Violation("bad_number", f"{where}.{key} is not a finite whole number: {value!r}")
        number = int(value)
    else:
        raise _Violation("missing_field", f"{where}.{key} missing or not an integer")
    if not 0 <= number <= MAX_WIRE_INT:
        raise _Violation("bad_number", f"{where}.{key} out of range: {str(number)[:24]}")
    return number


def _param_value(value: Any) -> str:
    """A ``customParameters`` value as text: Twilio sends strings; a scalar is
    tolerated, anything nested is a violation (and never ``str()``-ed whole)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if abs(value) > MAX_WIRE_INT:
            raise _Violation("bad_number", "start.customParameters value out of range")
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Violation("bad_number", "start.customParameters value is not finite")
        return repr(value)
    if value is None:
        return ""
    raise _Violation("missing_field", "start.customParameters values must be strings")


def _decode_payload(media: Mapping[str, Any], sample_width: int) -> bytes:
    payload = media.get("payload")
    if not isinstance(payload, str):
        raise _Violation("missing_field", "media.payload missing or not a string")
    if len(payload) > (MAX_PAYLOAD_BYTES * 4) // 3 + 4:
        raise _Violation("odd_payload", f"payload over {MAX_PAYLOAD_BYTES} bytes")
    try:
        audio = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise _Violation("bad_base64", str(exc)[:80]) from None
    if not audio:
        raise _Violation("odd_payload", "empty payload")
    if len(audio) > MAX_PAYLOAD_BYTES:
        raise _Violation("odd_payload", f"payload {len(audio)} bytes, over {MAX_PAYLOAD_BYTES}")
    if len(audio) % sample_width:
        raise _Violation("odd_payload", f"payload {len(audio)} bytes is not whole {sample_width}-byte samples")
    return audio


def _check_numbers(obj: Mapping[str, Any], where: str) -> None:
    """Every number directly in ``obj`` finite and within ``MAX_WIRE_INT`` (the
    media format is kept as given, so nothing downstream meets an infinity)."""
    for key, value in obj.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise _Violation("bad_number", f"{where}.{key} is not finite")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_WIRE_INT:
            raise _Violation("bad_number", f"{where}.{key} out of range")


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _sample_width(media_format: Mapping[str, Any]) -> int:
    encoding = media_format.get("encoding", "audio/x-mulaw")
    encoding = encoding.lower() if isinstance(encoding, str) else "audio/x-mulaw"
    width = 2 if ("l16" in encoding or "linear" in encoding or "pcm" in encoding) else 1
    channels = media_format.get("channels", 1)
    if isinstance(channels, int) and not isinstance(channels, bool) and 1 <= channels <= 8:
        width *= channels
    return width


# ------------------------------------------------------------------ server end


class TwilioStream:
    """Our end of one Twilio Media Stream: parse inbound text, serialize outbound.

    Guarantees:

    * ``receive`` never raises for any peer input; bad input yields exactly one
      :class:`ProtocolViolation`, increments ``violations[kind]`` and leaves
      ``state``/``stream_sid``/``call_sid`` unchanged.
    * State changes only on a valid ``start`` (AWAITING_START -> STREAMING) and a
      valid ``stop`` (STREAMING -> STOPPED). ``connected`` is accepted before start.
    * ``media``/``mark``/``clear`` return a JSON text for the socket and are valid
      only while STREAMING; otherwise they raise :class:`LocalProtocolError`.

    Owned by the call's transport task; not thread-safe.
    """

    __slots__ = (
        "max_message_bytes",
        "state",
        "stream_sid",
        "call_sid",
        "start",
        "violations",
        "messages_received",
        "_sample_width",
        "_media_prefix",
        "_mark_prefix",
        "_clear_text",
    )

    def __init__(self, max_message_bytes: int = 64 * 1024) -> None:
        if max_message_bytes <= 0:
            raise ValueError("max_message_bytes must be positive")
        self.max_message_bytes = max_message_bytes
        self.state = State.AWAITING_START
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.start: Start | None = None
        self.violations: collections.Counter[str] = collections.Counter()
        self.messages_received = 0
        self._sample_width = 1
        self._media_prefix = ""
        self._mark_prefix = ""
        self._clear_text = ""

    # -------------------------------------------------------------- inbound

    def receive(self, text: str | bytes) -> list[Event]:
        """Parse one WebSocket message from Twilio into events (usually one).

        Never raises on bad input; see the class docstring.
        """
        self.messages_received += 1
        try:
            return [self._receive(text)]
        except _Violation as v:
            self.violations[v.kind] += 1
            return [ProtocolViolation(v.kind, v.detail)]

    def _receive(self, text: str | bytes) -> Event:
        msg = _load(text, self.max_message_bytes)
        event = msg.get("event")
        if not isinstance(event, str):
            raise _Violation("missing_field", "event missing or not a string")
        if self.state is State.STOPPED:
            raise _Violation("after_stop", f"{event!r} after stop")
        if event == "media":  # the hot path first
            return self._on_media(msg)
        if event == "connected":
            protocol, version = msg.get("protocol", ""), msg.get("version", "")
            return Connected(
                protocol[:64] if isinstance(protocol, str) else "", version[:64] if isinstance(version, str) else ""
            )
        if event == "start":
            return self._on_start(msg)
        if event not in ("dtmf", "mark", "stop"):
            raise _Violation("unknown_event", f"event {event[:40]!r}")
        self._check_streaming(msg, event)
        if event == "mark":
            return Mark(_str_field(_obj_field(msg, "mark", "mark"), "name", "mark"))
        if event == "dtmf":
            return Dtmf(_str_field(_obj_field(msg, "dtmf", "dtmf"), "digit", "dtmf"))
        # stop
        self.state = State.STOPPED
        return Stop(self.call_sid or "")

    def _check_streaming(self, msg: Mapping[str, Any], event: str) -> None:
        if self.state is State.AWAITING_START:
            raise _Violation("before_start", f"{event!r} before start")
        sid = msg.get("streamSid")
        if not isinstance(sid, str):
            raise _Violation("missing_field", f"{event}.streamSid missing")
        if sid != self.stream_sid:
            raise _Violation("wrong_stream_sid", f"streamSid {sid[:40]!r} on stream {self.stream_sid!r}")

    def _on_media(self, msg: Mapping[str, Any]) -> Media:
        self._check_streaming(msg, "media")
        media = _obj_field(msg, "media", "media")
        audio = _decode_payload(media, self._sample_width)
        track = media.get("track", "inbound")
        return Media(
            audio,
            _int_field(media, "timestamp", "media", default=0),
            _int_field(media, "chunk", "media", default=0),
            track if isinstance(track, str) else "inbound",
        )

    def _on_start(self, msg: Mapping[str, Any]) -> Start:
        if self.state is not State.AWAITING_START:
            raise _Violation("duplicate_start", "start on a stream already started")
        start = _obj_field(msg, "start", "start")
        stream_sid = start.get("streamSid", msg.get("streamSid"))
        if not isinstance(stream_sid, str) or not stream_sid:
            raise _Violation("missing_field", "start.streamSid missing")
        outer = msg.get("streamSid")
        if outer is not None and outer != stream_sid:
            raise _Violation("wrong_stream_sid", "streamSid differs between message and start")
        call_sid = _str_field(start, "callSid", "start")
        account_sid = start.get("accountSid", "")
        custom = start.get("customParameters", {}) or {}
        if not isinstance(custom, dict):
            raise _Violation("missing_field", "start.customParameters is not an object")
        media_format = start.get("mediaFormat", {}) or {}
        if not isinstance(media_format, dict):
            raise _Violation("missing_field", "start.mediaFormat is not an object")
        _check_numbers(media_format, "start.mediaFormat")
        tracks = start.get("tracks", ["inbound"])
        if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
            raise _Violation("missing_field", "start.tracks is not a list of strings")
        event = Start(
            call_sid=call_sid,
            stream_sid=stream_sid,
            account_sid=account_sid if isinstance(account_sid, str) else "",
            custom_parameters={k: _param_value(v) for k, v in custom.items()},
            media_format=dict(media_format),
            tracks=tuple(tracks),
        )
        # All validation passed: commit the transition.
        self.state = State.STREAMING
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.start = event
        self._sample_width = _sample_width(media_format)
        sid = json.dumps(stream_sid)
        self._media_prefix = '{"event":"media","streamSid":' + sid + ',"media":{"payload":"'
        self._mark_prefix = '{"event":"mark","streamSid":' + sid + ',"mark":{"name":'
        self._clear_text = '{"event":"clear","streamSid":' + sid + "}"
        return event

    # -------------------------------------------------------------- outbound

    def _require_streaming(self) -> None:
        if self.state is not State.STREAMING:
            raise LocalProtocolError(f"cannot send while {self.state.value}")

    def media(self, mulaw: bytes) -> str:
        """JSON text for one outbound ``media`` message carrying ``mulaw``."""
        self._require_streaming()
        if not mulaw:
            raise LocalProtocolError("refusing to send an empty media payload")
        return self._media_prefix + _b64(mulaw) + '"}}'

    def mark(self, name: str) -> str:
        """JSON text for a ``mark``; Twilio echoes it when playback reaches it."""
        self._require_streaming()
        if not isinstance(name, str) or not name:
            raise LocalProtocolError("mark name must be a non-empty string")
        return self._mark_prefix + json.dumps(name) + "}}"

    def clear(self) -> str:
        """JSON text for ``clear``: Twilio drops buffered audio and echoes pending marks."""
        self._require_streaming()
        return self._clear_text


# ------------------------------------------------------------------ caller (Twilio) end


class CallerSideStream:
    """Twilio's end of a Media Stream, for the simulated caller and for tests.

    Serializes what Twilio sends (``connected``, ``start``, ``media``, ``dtmf``,
    ``mark`` echoes, ``stop``) with Twilio's sequence numbers, chunk counters and
    timestamps, and parses what the engine sends (``media``, ``mark``, ``clear``)
    into :class:`Media`, :class:`Mark` and :class:`Clear`. The same guarantees as
    :class:`TwilioStream` hold: ``receive`` never raises, violations are counted,
    and serializing after ``stop()`` raises :class:`LocalProtocolError`.

    Owned by one task set on one trio thread (the simulated caller); not thread-safe.
    """

    def __init__(
        self,
        call_sid: str,
        stream_sid: str,
        account_sid: str = "AC" + "0" * 32,
        max_message_bytes: int = 1024 * 1024,
    ) -> None:
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self.account_sid = account_sid
        self.max_message_bytes = max_message_bytes
        self.state = State.AWAITING_START
        self.violations: collections.Counter[str] = collections.Counter()
        self._seq = 0
        self._chunk = 0
        sid = json.dumps(stream_sid)
        self._sid_json = sid

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    def _require(self, *states: State) -> None:
        if self.state not in states:
            raise LocalProtocolError(f"cannot send while {self.state.value}")

    # -------------------------------------------------------------- outbound (what Twilio sends)

    def connected(self) -> str:
        self._require(State.AWAITING_START)
        return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self, custom_parameters: Mapping[str, str] | None = None) -> str:
        self._require(State.AWAITING_START)
        self.state = State.STREAMING
        return json.dumps(
            {
                "event": "start",
                "sequenceNumber": self._next_seq(),
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": dict(custom_parameters or {}),
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
                "streamSid": self.stream_sid,
            }
        )

    def media(self, mulaw: bytes, timestamp_ms: int) -> str:
        """One inbound ``media`` message; ``timestamp_ms`` is ms since stream start."""
        self._require(State.STREAMING)
        self._chunk += 1
        return (
            '{"event":"media","sequenceNumber":"' + self._next_seq() + '","media":{"track":"inbound","chunk":"'
            + str(self._chunk) + '","timestamp":"' + str(int(timestamp_ms)) + '","payload":"' + _b64(mulaw)
            + '"},"streamSid":' + self._sid_json + "}"
        )

    def dtmf(self, digit: str) -> str:
        self._require(State.STREAMING)
        return json.dumps(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": self._next_seq(),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    def mark(self, name: str) -> str:
        """Echo of a mark whose audio has been played."""
        self._require(State.STREAMING)
        return json.dumps(
            {"event": "mark", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid, "mark": {"name": name}}
        )

    def stop(self) -> str:
        self._require(State.STREAMING)
        self.state = State.STOPPED
        return json.dumps(
            {
                "event": "stop",
                "sequenceNumber": self._next_seq(),
                "streamSid": self.stream_sid,
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            }
        )

    # -------------------------------------------------------------- inbound (what the engine sends)

    def receive(self, text: str | bytes) -> list[Event]:
        """Parse one message from the engine: Media, Mark, Clear or ProtocolViolation."""
        try:
            return [self._receive(text)]
        except _Violation as v:
            self.violations[v.kind] += 1
            return [ProtocolViolation(v.kind, v.detail)]

    def _receive(self, text: str | bytes) -> Event:
        msg = _load(text, self.max_message_bytes)
        event = msg.get("event")
        if not isinstance(event, str):
            raise _Violation("missing_field", "event missing or not a string")
        if event not in ("media", "mark", "clear"):
            raise _Violation("unknown_event", f"event {event[:40]!r}")
        if self.state is State.STOPPED:
            raise _Violation("after_stop", f"{event!r} after stop")
        if self.state is State.AWAITING_START:
            raise _Violation("before_start", f"{event!r} before start")
        sid = msg.get("streamSid")
        if not isinstance(sid, str):
            raise _Violation("missing_field", f"{event}.streamSid missing")
        if sid != self.stream_sid:
            raise _Violation("wrong_stream_sid", f"streamSid {sid[:40]!r} on stream {self.stream_sid!r}")
        if event == "media":
            return Media(_decode_payload(_obj_field(msg, "media", "media"), 1), track="outbound")
        if event == "mark":
            return Mark(_str_field(_obj_field(msg, "mark", "mark"), "name", "mark"))
        return Clear()

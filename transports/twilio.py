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
* :class:`CallerSideStream` (``transports.twilio_caller``) is Twilio's end, used by
  the simulated caller (``callsim/caller.py``) and by tests: it serializes what
  Twilio sends and parses what the engine sends.

The events both produce are in ``transports.twilio_events``; the strict field
checks they share, in ``transports.twilio_fields``.

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

import collections
import json
from typing import Any, Mapping

from transports import twilio_events
from transports.twilio_caller import CallerSideStream
from transports.twilio_events import (
    MAX_PAYLOAD_BYTES,
    VIOLATION_KINDS,
    Clear,
    Connected,
    Dtmf,
    Event,
    LocalProtocolError,
    Mark,
    Media,
    ProtocolViolation,
    Start,
    State,
    Stop,
)
from transports.twilio_fields import (
    MAX_WIRE_INT,
    Violation,
    b64,
    check_numbers,
    decode_payload,
    int_field,
    load_message,
    obj_field,
    param_value,
    sample_width,
    str_field,
)

# The events (``transports.twilio_events``) and the caller's end
# (``transports.twilio_caller``) are part of this module's documented API.
__all__ = [*twilio_events.__all__, "TwilioStream", "CallerSideStream", "MAX_WIRE_INT"]


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
        except Violation as v:
            self.violations[v.kind] += 1
            return [ProtocolViolation(v.kind, v.detail)]

    def _receive(self, text: str | bytes) -> Event:
        msg = load_message(text, self.max_message_bytes)
        event = msg.get("event")
        if not isinstance(event, str):
            raise Violation("missing_field", "event missing or not a string")
        if self.state is State.STOPPED:
            raise Violation("after_stop", f"{event!r} after stop")
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
            raise Violation("unknown_event", f"event {event[:40]!r}")
        self._check_streaming(msg, event)
        if event == "mark":
            return Mark(str_field(obj_field(msg, "mark", "mark"), "name", "mark"))
        if event == "dtmf":
            return Dtmf(str_field(obj_field(msg, "dtmf", "dtmf"), "digit", "dtmf"))
        # stop
        self.state = State.STOPPED
        return Stop(self.call_sid or "")

    def _check_streaming(self, msg: Mapping[str, Any], event: str) -> None:
        if self.state is State.AWAITING_START:
            raise Violation("before_start", f"{event!r} before start")
        sid = msg.get("streamSid")
        if not isinstance(sid, str):
            raise Violation("missing_field", f"{event}.streamSid missing")
        if sid != self.stream_sid:
            raise Violation("wrong_stream_sid", f"streamSid {sid[:40]!r} on stream {self.stream_sid!r}")

    def _on_media(self, msg: Mapping[str, Any]) -> Media:
        self._check_streaming(msg, "media")
        media = obj_field(msg, "media", "media")
        audio = decode_payload(media, self._sample_width)
        track = media.get("track", "inbound")
        return Media(
            audio,
            int_field(media, "timestamp", "media", default=0),
            int_field(media, "chunk", "media", default=0),
            track if isinstance(track, str) else "inbound",
        )

    def _on_start(self, msg: Mapping[str, Any]) -> Start:
        if self.state is not State.AWAITING_START:
            raise Violation("duplicate_start", "start on a stream already started")
        start = obj_field(msg, "start", "start")
        stream_sid = start.get("streamSid", msg.get("streamSid"))
        if not isinstance(stream_sid, str) or not stream_sid:
            raise Violation("missing_field", "start.streamSid missing")
        outer = msg.get("streamSid")
        if outer is not None and outer != stream_sid:
            raise Violation("wrong_stream_sid", "streamSid differs between message and start")
        call_sid = str_field(start, "callSid", "start")
        account_sid = start.get("accountSid", "")
        custom = start.get("customParameters", {}) or {}
        if not isinstance(custom, dict):
            raise Violation("missing_field", "start.customParameters is not an object")
        media_format = start.get("mediaFormat", {}) or {}
        if not isinstance(media_format, dict):
            raise Violation("missing_field", "start.mediaFormat is not an object")
        check_numbers(media_format, "start.mediaFormat")
        tracks = start.get("tracks", ["inbound"])
        if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
            raise Violation("missing_field", "start.tracks is not a list of strings")
        event = Start(
            call_sid=call_sid,
            stream_sid=stream_sid,
            account_sid=account_sid if isinstance(account_sid, str) else "",
            custom_parameters={k: param_value(v) for k, v in custom.items()},
            media_format=dict(media_format),
            tracks=tuple(tracks),
        )
        # All validation passed: commit the transition.
        self.state = State.STREAMING
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.start = event
        self._sample_width = sample_width(media_format)
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
        return self._media_prefix + b64(mulaw) + '"}}'

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

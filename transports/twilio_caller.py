"""Twilio's end of a Media Stream, sans-IO: what the simulated caller and the tests speak.

Serializes what Twilio sends with Twilio's sequence numbers, chunk counters and
timestamps, and parses what the engine sends with the same strict field checks
as the server end (``transports.twilio_fields``), so a test or a load run sees
the engine's output exactly as Twilio would. No I/O: the caller's socket is
someone else's.
"""

from __future__ import annotations

import collections
import json
from typing import Mapping

from transports.twilio_events import Clear, Event, LocalProtocolError, Mark, Media, ProtocolViolation, State
from transports.twilio_fields import Violation, b64, decode_payload, load_message, obj_field, str_field

__all__ = ["CallerSideStream"]


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
            + str(self._chunk) + '","timestamp":"' + str(int(timestamp_ms)) + '","payload":"' + b64(mulaw)
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
        except Violation as v:
            self.violations[v.kind] += 1
            return [ProtocolViolation(v.kind, v.detail)]

    def _receive(self, text: str | bytes) -> Event:
        msg = load_message(text, self.max_message_bytes)
        event = msg.get("event")
        if not isinstance(event, str):
            raise Violation("missing_field", "event missing or not a string")
        if event not in ("media", "mark", "clear"):
            raise Violation("unknown_event", f"event {event[:40]!r}")
        if self.state is State.STOPPED:
            raise Violation("after_stop", f"{event!r} after stop")
        if self.state is State.AWAITING_START:
            raise Violation("before_start", f"{event!r} before start")
        sid = msg.get("streamSid")
        if not isinstance(sid, str):
            raise Violation("missing_field", f"{event}.streamSid missing")
        if sid != self.stream_sid:
            raise Violation("wrong_stream_sid", f"streamSid {sid[:40]!r} on stream {self.stream_sid!r}")
        if event == "media":
            return Media(decode_payload(obj_field(msg, "media", "media"), 1), track="outbound")
        if event == "mark":
            return Mark(str_field(obj_field(msg, "mark", "mark"), "name", "mark"))
        return Clear()

"""Parsing Twilio's JSON fields strictly: every bad value is a named violation, never a crash.

The checks both ends of the protocol share. Each helper returns the value the
engine may trust or raises :class:`Violation` with one of ``VIOLATION_KINDS``;
the protocol objects turn that into a counted ``ProtocolViolation`` event, so
one malformed frame never ends a call. Limits are explicit: message size,
payload size and whole samples, integers within ``MAX_WIRE_INT``, finite
numbers only, strict base64. Pure functions over str and bytes, no I/O.
"""

from __future__ import annotations

import binascii
import json
import math
from typing import Any, Mapping

from transports.twilio_events import MAX_PAYLOAD_BYTES

__all__ = [
    "Violation",
    "MAX_WIRE_INT",
    "load_message",
    "str_field",
    "obj_field",
    "int_field",
    "param_value",
    "decode_payload",
    "check_numbers",
    "b64",
    "sample_width",
]


class Violation(Exception):
    """Raised during parsing; the protocol objects turn it into a ProtocolViolation event."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail


# ------------------------------------------------------------------ shared parsing helpers


def load_message(text: str | bytes | bytearray | memoryview, max_bytes: int) -> dict:
    """Parse one WebSocket message into a JSON object, or raise Violation."""
    if not isinstance(text, str):
        raise Violation("binary_frame", f"binary message of {len(text)} bytes")
    # len(str) <= UTF-8 length <= 4 * len(str): only encode when it could matter.
    if len(text) > max_bytes or (len(text) * 4 > max_bytes and len(text.encode("utf-8", "surrogatepass")) > max_bytes):
        raise Violation("oversized", f"message over {max_bytes} bytes")
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise Violation("not_json", f"{type(exc).__name__}: {str(exc)[:80]}") from None
    if not isinstance(msg, dict):
        raise Violation("not_json", f"JSON {type(msg).__name__}, not an object")
    return msg


def str_field(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise Violation("missing_field", f"{where}.{key} missing or not a non-empty string")
    return value


def obj_field(obj: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise Violation("missing_field", f"{where}.{key} missing or not an object")
    return value


#: Largest counter accepted from the wire (timestamps in ms, chunk numbers):
#: 2**53, the largest integer every JSON implementation holds exactly (285,000
#: years of audio in milliseconds).
MAX_WIRE_INT = 1 << 53


def int_field(obj: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
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
            raise Violation("missing_field", f"{where}.{key} is not an integer: {value[:24]!r}")
        if len(text) > 16:
            raise Violation("bad_number", f"{where}.{key} out of range: {text[:24]}...")
        number = int(text)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise Violation("bad_number", f"{where}.{key} is not a finite whole number: {value!r}")
        number = int(value)
    else:
        raise Violation("missing_field", f"{where}.{key} missing or not an integer")
    if not 0 <= number <= MAX_WIRE_INT:
        raise Violation("bad_number", f"{where}.{key} out of range: {str(number)[:24]}")
    return number


def param_value(value: Any) -> str:
    """A ``customParameters`` value as text: Twilio sends strings; a scalar is
    tolerated, anything nested is a violation (and never ``str()``-ed whole)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if abs(value) > MAX_WIRE_INT:
            raise Violation("bad_number", "start.customParameters value out of range")
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Violation("bad_number", "start.customParameters value is not finite")
        return repr(value)
    if value is None:
        return ""
    raise Violation("missing_field", "start.customParameters values must be strings")


def decode_payload(media: Mapping[str, Any], sample_width: int) -> bytes:
    payload = media.get("payload")
    if not isinstance(payload, str):
        raise Violation("missing_field", "media.payload missing or not a string")
    if len(payload) > (MAX_PAYLOAD_BYTES * 4) // 3 + 4:
        raise Violation("odd_payload", f"payload over {MAX_PAYLOAD_BYTES} bytes")
    try:
        audio = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise Violation("bad_base64", str(exc)[:80]) from None
    if not audio:
        raise Violation("odd_payload", "empty payload")
    if len(audio) > MAX_PAYLOAD_BYTES:
        raise Violation("odd_payload", f"payload {len(audio)} bytes, over {MAX_PAYLOAD_BYTES}")
    if len(audio) % sample_width:
        raise Violation("odd_payload", f"payload {len(audio)} bytes is not whole {sample_width}-byte samples")
    return audio


def check_numbers(obj: Mapping[str, Any], where: str) -> None:
    """Every number directly in ``obj`` finite and within ``MAX_WIRE_INT`` (the
    media format is kept as given, so nothing downstream meets an infinity)."""
    for key, value in obj.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise Violation("bad_number", f"{where}.{key} is not finite")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_WIRE_INT:
            raise Violation("bad_number", f"{where}.{key} out of range")


def b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def sample_width(media_format: Mapping[str, Any]) -> int:
    encoding = media_format.get("encoding", "audio/x-mulaw")
    encoding = encoding.lower() if isinstance(encoding, str) else "audio/x-mulaw"
    width = 2 if ("l16" in encoding or "linear" in encoding or "pcm" in encoding) else 1
    channels = media_format.get("channels", 1)
    if isinstance(channels, int) and not isinstance(channels, bool) and 1 <= channels <= 8:
        width *= channels
    return width

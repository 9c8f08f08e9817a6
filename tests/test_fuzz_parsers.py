"""Property-based fuzzing of every parser that reads peer input (hypothesis).

The guarantee under test: no input a peer can send raises anything but the
documented protocol error. ``TwilioStream.receive`` and
``CallerSideStream.receive`` never raise (bad input is a ``ProtocolViolation``
of a documented kind and leaves the state as it was); the WhatsApp parsers
raise only ``PayloadError``. Inputs are arbitrary text, arbitrary JSON values
(non-finite and huge numbers included, as ``json.loads`` produces them from
``1e999``, ``Infinity`` and ``NaN``), and well-formed messages with one field
replaced by such a value, which reaches deeper than random text does.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transports.twilio import (
    VIOLATION_KINDS,
    CallerSideStream,
    Media,
    ProtocolViolation,
    State,
    TwilioStream,
)
from whatsapp_bridge import baileys, cloud

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

STREAM_SID = "MZ" + "0" * 32
CALL_SID = "CA" + "0" * 32

# Numbers as a hostile peer sends them: non-finite, huge, negative, fractional.
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e308, -0.0, 2**53 + 1, 2**63, 10**30]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=40))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
number_texts = st.sampled_from(
    ["1e999", "-1e999", "Infinity", "-Infinity", "NaN", "1" * 5000, "-1", "1.5", "9" * 20, "0x10", "١٢"]
)


def _raw(value: Any) -> str:
    """JSON text of ``value``; non-finite floats as Python writes them (Infinity, NaN)."""
    return json.dumps(value)


def _media(**media: Any) -> dict[str, Any]:
    base = {"track": "inbound", "chunk": "1", "timestamp": "20", "payload": "/w=="}
    base.update(media)
    return {"event": "media", "sequenceNumber": "3", "streamSid": STREAM_SID, "media": base}


def _start(**start: Any) -> dict[str, Any]:
    base = {
        "accountSid": "AC" + "0" * 32,
        "streamSid": STREAM_SID,
        "callSid": CALL_SID,
        "tracks": ["inbound"],
        "customParameters": {"from": "+15550001111"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    base.update(start)
    return {"event": "start", "sequenceNumber": "1", "start": base, "streamSid": STREAM_SID}


def _streaming() -> TwilioStream:
    stream = TwilioStream()
    stream.receive(json.dumps(_start()))
    assert stream.state is State.STREAMING
    return stream


def _check_events(stream: TwilioStream, events: list[Any], state: State) -> None:
    assert isinstance(events, list) and len(events) == 1
    event = events[0]
    if isinstance(event, ProtocolViolation):
        assert event.kind in VIOLATION_KINDS
        assert stream.state is state  # a violation never changes the state


# ------------------------------------------------------------------ TwilioStream


@FUZZ
@given(st.one_of(st.text(max_size=300), st.binary(max_size=64), json_values.map(_raw)))
def test_twilio_stream_never_raises_on_any_message(text: Any) -> None:
    for stream in (TwilioStream(), _streaming()):
        state = stream.state
        _check_events(stream, stream.receive(text), state)


@FUZZ
@given(
    st.sampled_from(["timestamp", "chunk", "payload", "track"]),
    st.one_of(json_values, number_texts),
)
def test_twilio_media_with_any_field_value(key: str, value: Any) -> None:
    stream = _streaming()
    events = stream.receive(_raw(_media(**{key: value})))
    _check_events(stream, events, State.STREAMING)
    if isinstance(events[0], Media):
        assert 0 <= events[0].timestamp_ms <= 2**53 and 0 <= events[0].chunk <= 2**53
    # The stream keeps working: the next good frame is heard.
    assert isinstance(stream.receive(_raw(_media()))[0], Media)


@FUZZ
@given(
    st.sampled_from(["streamSid", "callSid", "accountSid", "tracks", "customParameters", "mediaFormat"]),
    json_values,
)
def test_twilio_start_with_any_field_value(key: str, value: Any) -> None:
    stream = TwilioStream()
    events = stream.receive(_raw(_start(**{key: value})))
    _check_events(stream, events, State.AWAITING_START)
    if stream.state is State.STREAMING:
        assert isinstance(stream.receive(_raw(_media()))[0], Media)


def test_twilio_non_finite_numbers_are_violations_not_errors() -> None:
    for raw in ("1e999", "-1e999", "Infinity", "NaN", "1.5", "-20", "1" + "0" * 400):
        stream = _streaming()
        text = _raw(_media()).replace('"timestamp": "20"', f'"timestamp": {raw}')
        event = stream.receive(text)[0]
        assert isinstance(event, ProtocolViolation) and event.kind == "bad_number", (raw, event)
        assert stream.violations["bad_number"] == 1
        assert isinstance(stream.receive(_raw(_media()))[0], Media)
    start = _raw(_start(mediaFormat={"encoding": "audio/x-mulaw", "sampleRate": float("inf")}))
    stream = TwilioStream()
    assert stream.receive(start)[0].kind == "bad_number" and stream.state is State.AWAITING_START


# ------------------------------------------------------------------ CallerSideStream


@FUZZ
@given(st.one_of(st.text(max_size=300), json_values.map(_raw)), json_values)
def test_caller_side_stream_never_raises(text: str, value: Any) -> None:
    proto = CallerSideStream(CALL_SID, STREAM_SID)
    proto.start()
    for message in (text, _raw({"event": "media", "streamSid": STREAM_SID, "media": value}),
                    _raw({"event": "mark", "streamSid": STREAM_SID, "mark": value})):
        events = proto.receive(message)
        assert len(events) == 1
        if isinstance(events[0], ProtocolViolation):
            assert events[0].kind in VIOLATION_KINDS


# ------------------------------------------------------------------ WhatsApp


BAILEYS_OK = {"id": "M1", "chat": "972500000000@s.whatsapp.net", "text": "hello", "timestamp": 1700000000}


def _cloud(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550001111", "phone_number_id": "PN1"},
                            "messages": [message],
                        },
                    }
                ],
            }
        ],
    }


CLOUD_MESSAGE = {"from": "972500000000", "id": "wamid.1", "timestamp": "1700000000", "type": "text",
                 "text": {"body": "hi"}}


@FUZZ
@given(st.one_of(json_values, st.dictionaries(st.sampled_from(sorted(BAILEYS_OK) + ["from", "to", "push_name"]),
                                              json_values)))
def test_baileys_parser_raises_only_payload_error(obj: Any) -> None:
    for candidate in (obj, {**BAILEYS_OK, **obj} if isinstance(obj, dict) else obj):
        try:
            inbound = baileys.parse_inbound(candidate, max_text_chars=4096)
        except baileys.PayloadError:
            continue
        assert 0 <= inbound.timestamp <= baileys.MAX_UNIX_SECONDS
    try:
        baileys.parse_qr(obj)
    except baileys.PayloadError:
        pass


@FUZZ
@given(st.sampled_from(sorted(CLOUD_MESSAGE) + ["context"]), st.one_of(json_values, number_texts), json_values)
def test_cloud_parser_raises_only_payload_error(key: str, value: Any, whole: Any) -> None:
    for candidate in (_cloud({**CLOUD_MESSAGE, key: value}), whole, _cloud(whole) if isinstance(whole, dict) else whole):
        try:
            hook = cloud.parse_webhook(candidate, max_text_chars=4096)
        except cloud.PayloadError:
            continue
        for text in hook.texts:
            assert 0 <= text.timestamp <= baileys.MAX_UNIX_SECONDS


def test_whatsapp_non_finite_timestamps_are_payload_errors() -> None:
    for raw in (float("inf"), float("-inf"), float("nan"), 1.5, -1, 10**30, True, "1e999", "1" * 5000):
        try:
            baileys.parse_inbound({**BAILEYS_OK, "timestamp": raw}, max_text_chars=4096)
        except baileys.PayloadError as exc:
            assert exc.field == "timestamp"
        else:
            raise AssertionError(f"timestamp {raw!r} accepted")
        try:
            cloud.parse_webhook(_cloud({**CLOUD_MESSAGE, "timestamp": raw}), max_text_chars=4096)
        except cloud.PayloadError as exc:
            assert exc.field.endswith("messages[0].timestamp")
        else:
            raise AssertionError(f"timestamp {raw!r} accepted")
    assert baileys.parse_inbound({**BAILEYS_OK, "timestamp": 1700000000.0}, max_text_chars=10).timestamp == 1700000000

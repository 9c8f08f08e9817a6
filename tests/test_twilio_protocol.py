"""Twilio Media Streams protocol objects, TwiML and signatures, with recorded-style fixtures."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from xml.etree import ElementTree

import pytest
from twilio.request_validator import RequestValidator

from transports import signature
from transports.twilio import (
    MAX_PAYLOAD_BYTES,
    VIOLATION_KINDS,
    CallerSideStream,
    Clear,
    Connected,
    Dtmf,
    LocalProtocolError,
    Mark,
    Media,
    ProtocolViolation,
    Start,
    State,
    Stop,
    TwilioStream,
)
from transports.twiml import connect_stream_twiml, say_and_hangup_twiml

FIXTURES = Path(__file__).parent / "fixtures" / "twilio"
CALL = json.loads((FIXTURES / "call_basic.json").read_text())["messages"]
JUNK = json.loads((FIXTURES / "junk.json").read_text())["cases"]
STREAM_SID = CALL[1]["start"]["streamSid"]
CALL_SID = CALL[1]["start"]["callSid"]


def texts(messages) -> list[str]:
    return [json.dumps(m) for m in messages]


def started() -> TwilioStream:
    stream = TwilioStream()
    for text in texts(CALL[:2]):
        stream.receive(text)
    assert stream.state is State.STREAMING
    return stream


# ------------------------------------------------------------------ inbound, the happy path


def test_recorded_call_sequence() -> None:
    stream = TwilioStream()
    assert stream.state is State.AWAITING_START
    events = [e for text in texts(CALL) for e in stream.receive(text)]
    assert len(events) == len(CALL)
    assert events[0] == Connected("Call", "1.0.0")
    start = events[1]
    assert isinstance(start, Start)
    assert start.call_sid == CALL_SID and start.stream_sid == STREAM_SID
    assert start.account_sid.startswith("AC")
    assert start.custom_parameters == {"business": "demo", "from": "+972501234567", "to": "+97235551234"}
    assert start.media_format == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert start.tracks == ("inbound",)
    media = [e for e in events if isinstance(e, Media)]
    assert len(media) == 8
    for i, (m, raw) in enumerate(zip(media, CALL[2:10], strict=True)):
        assert m.payload == base64.b64decode(raw["media"]["payload"]) and len(m.payload) == 160
        assert m.chunk == i + 1 and m.timestamp_ms == i * 20 + 5 and m.track == "inbound"
    assert events[10] == Dtmf("1")
    assert events[11] == Mark("greeting-end")
    assert events[12] == Stop(CALL_SID)
    assert stream.state is State.STOPPED
    assert stream.stream_sid == STREAM_SID and stream.call_sid == CALL_SID and stream.start == start
    assert not stream.violations
    assert stream.messages_received == len(CALL)


def test_bytes_of_text_are_a_binary_frame_and_start_without_connected_is_fine() -> None:
    stream = TwilioStream()
    assert isinstance(stream.receive(json.dumps(CALL[1]))[0], Start)  # connected is optional
    [event] = stream.receive(json.dumps(CALL[2]).encode())
    assert event == ProtocolViolation("binary_frame", event.detail)


# ------------------------------------------------------------------ inbound, junk


def junk_text(case: dict) -> str | bytes:
    if "text" in case:
        return case["text"]
    if "message" in case:
        return json.dumps(case["message"])
    if "binary_hex" in case:
        return bytes.fromhex(case["binary_hex"])
    msg = dict(CALL[2])
    msg["media"] = dict(msg["media"], payload="/" * (case["oversized_bytes"] // 4 * 4))
    text = json.dumps(msg)
    assert len(text) > case["oversized_bytes"]
    return text


@pytest.mark.parametrize("case", JUNK, ids=[c["name"] for c in JUNK])
def test_junk_is_counted_dropped_and_leaves_state(case: dict) -> None:
    assert case["expect"] in VIOLATION_KINDS
    stream = TwilioStream()
    stream.receive(json.dumps(CALL[0]))
    if case["phase"] == "streaming":
        stream.receive(json.dumps(CALL[1]))
    before = (stream.state, stream.stream_sid, stream.call_sid, stream.start)
    [event] = stream.receive(junk_text(case))
    assert isinstance(event, ProtocolViolation)
    assert event.kind == case["expect"], event
    assert event.detail
    assert stream.violations == {case["expect"]: 1}
    assert (stream.state, stream.stream_sid, stream.call_sid, stream.start) == before
    # the stream still works afterwards
    follow = CALL[2] if case["phase"] == "streaming" else CALL[1]
    assert isinstance(stream.receive(json.dumps(follow))[0], (Media, Start))


def test_junk_counters_accumulate_per_kind() -> None:
    stream = started()
    for _ in range(3):
        stream.receive("garbage")
    stream.receive(b"\x00")
    stream.receive(json.dumps({"event": "hello", "streamSid": STREAM_SID}))
    assert stream.violations == {"not_json": 3, "binary_frame": 1, "unknown_event": 1}
    assert stream.state is State.STREAMING


def test_anything_after_stop_is_a_violation() -> None:
    stream = TwilioStream()
    for text in texts(CALL):
        stream.receive(text)
    for msg in (CALL[2], CALL[-1], CALL[1], CALL[0]):
        [event] = stream.receive(json.dumps(msg))
        assert event.kind == "after_stop"
    assert stream.violations == {"after_stop": 4}
    assert stream.state is State.STOPPED


def test_payload_limits() -> None:
    stream = TwilioStream(max_message_bytes=1024 * 1024)
    stream.receive(json.dumps(CALL[1]))

    def media(payload: str) -> list:
        msg = dict(CALL[2])
        msg["media"] = dict(msg["media"], payload=payload)
        return stream.receive(json.dumps(msg))

    ok = b"\x01" * MAX_PAYLOAD_BYTES
    assert media(base64.b64encode(ok).decode())[0].payload == ok
    assert media(base64.b64encode(ok + b"\x01").decode())[0].kind == "odd_payload"
    assert media("")[0].kind == "odd_payload"
    assert media("AAA")[0].kind == "bad_base64"  # not padded
    assert media("AA==\n")[0].kind == "bad_base64"  # strict: no stray characters
    assert stream.violations == {"odd_payload": 2, "bad_base64": 2}


def test_l16_stream_rejects_half_samples() -> None:
    msg = json.loads(json.dumps(CALL[1]))
    msg["start"]["mediaFormat"] = {"encoding": "audio/x-l16", "sampleRate": 8000, "channels": 1}
    stream = TwilioStream()
    stream.receive(json.dumps(msg))
    bad = dict(CALL[2], media=dict(CALL[2]["media"], payload=base64.b64encode(b"\x00\x01\x02").decode()))
    assert stream.receive(json.dumps(bad))[0].kind == "odd_payload"


def test_bad_numbers_and_constructor() -> None:
    stream = started()
    bad = dict(CALL[2], media=dict(CALL[2]["media"], chunk="two"))
    assert stream.receive(json.dumps(bad))[0].kind == "missing_field"
    deep = "[" * 100_000 + "]" * 100_000
    assert TwilioStream(max_message_bytes=1_000_000).receive(deep)[0].kind == "not_json"
    with pytest.raises(ValueError):
        TwilioStream(max_message_bytes=0)


# ------------------------------------------------------------------ outbound


def test_outbound_messages() -> None:
    stream = started()
    audio = bytes(range(256)) * 2
    media = json.loads(stream.media(audio))
    assert media == {"event": "media", "streamSid": STREAM_SID, "media": {"payload": media["media"]["payload"]}}
    assert base64.b64decode(media["media"]["payload"], validate=True) == audio
    assert json.loads(stream.mark("reply-1")) == {"event": "mark", "streamSid": STREAM_SID, "mark": {"name": "reply-1"}}
    tricky = 'a"b\\c\nd'
    assert json.loads(stream.mark(tricky))["mark"]["name"] == tricky
    assert json.loads(stream.clear()) == {"event": "clear", "streamSid": STREAM_SID}


def test_outbound_outside_streaming_is_a_local_error() -> None:
    stream = TwilioStream()
    for send in (lambda: stream.media(b"\xff"), lambda: stream.mark("m"), stream.clear):
        with pytest.raises(LocalProtocolError):
            send()
    stream.receive(json.dumps(CALL[1]))
    with pytest.raises(LocalProtocolError):
        stream.media(b"")
    with pytest.raises(LocalProtocolError):
        stream.mark("")
    stream.receive(json.dumps(CALL[-1]))
    with pytest.raises(LocalProtocolError):
        stream.media(b"\xff")
    assert not stream.violations  # local misuse is never counted as a peer violation


def test_outbound_media_is_fast_enough() -> None:
    import time

    stream = started()
    frame = b"\x55" * 160
    t0 = time.perf_counter()
    for _ in range(20_000):
        stream.media(frame)
    per_call_us = (time.perf_counter() - t0) / 20_000 * 1e6
    assert per_call_us < 20, per_call_us  # a few µs; json.dumps per frame would be ~3x


# ------------------------------------------------------------------ the caller side (Twilio's end)


def test_caller_side_round_trip_through_server_side() -> None:
    caller = CallerSideStream(CALL_SID, STREAM_SID)
    server = TwilioStream()
    assert server.receive(caller.connected()) == [Connected("Call", "1.0.0")]
    [start] = server.receive(caller.start({"business": "demo"}))
    assert start.custom_parameters == {"business": "demo"} and start.call_sid == CALL_SID
    [m] = server.receive(caller.media(b"\x12" * 160, timestamp_ms=40))
    assert m == Media(b"\x12" * 160, 40, 1, "inbound")
    assert server.receive(caller.dtmf("#")) == [Dtmf("#")]
    assert server.receive(caller.mark("x")) == [Mark("x")]
    # server -> caller
    assert caller.receive(server.media(b"\x34" * 160)) == [Media(b"\x34" * 160, track="outbound")]
    assert caller.receive(server.mark("m1")) == [Mark("m1")]
    assert caller.receive(server.clear()) == [Clear()]
    assert caller.receive("nope")[0].kind == "not_json"
    assert caller.receive(json.dumps({"event": "media", "streamSid": "MZother", "media": {"payload": "/w=="}}))[
        0
    ].kind == "wrong_stream_sid"
    assert caller.violations == {"not_json": 1, "wrong_stream_sid": 1}
    assert server.receive(caller.stop()) == [Stop(CALL_SID)]
    assert server.state is State.STOPPED and not server.violations
    with pytest.raises(LocalProtocolError):
        caller.media(b"\xff", 0)
    # sequence numbers increase by one from start
    c2 = CallerSideStream(CALL_SID, STREAM_SID)
    c2.connected()
    msgs = [c2.start(), c2.media(b"\xff", 0), c2.dtmf("1"), c2.mark("a"), c2.stop()]
    assert [int(json.loads(t)["sequenceNumber"]) for t in msgs] == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------ TwiML


def test_connect_stream_twiml() -> None:
    xml = connect_stream_twiml(
        "wss://engine.example.com/twilio/media?token=a&b=c",
        {"business": "demo", "from": "+972501234567", "note": 'a "quoted" <value> & more'},
        "https://engine.example.com/twilio/status",
    )
    root = ElementTree.fromstring(xml)
    assert root.tag == "Response"
    [connect] = list(root)
    assert connect.tag == "Connect"
    [stream] = list(connect)
    assert stream.tag == "Stream"
    assert stream.get("url") == "wss://engine.example.com/twilio/media?token=a&b=c"
    assert stream.get("statusCallback") == "https://engine.example.com/twilio/status"
    assert stream.get("statusCallbackMethod") == "POST"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == {"business": "demo", "from": "+972501234567", "note": 'a "quoted" <value> & more'}
    bare = ElementTree.fromstring(connect_stream_twiml("ws://127.0.0.1:8080/twilio/media", {}, None))
    assert bare.find("Connect/Stream").get("statusCallback") is None
    with pytest.raises(ValueError):
        connect_stream_twiml("https://not-a-websocket", {}, None)


def test_say_and_hangup_twiml() -> None:
    text = "כל הנציגים עסוקים כרגע, נא להתקשר שוב מאוחר יותר."
    root = ElementTree.fromstring(say_and_hangup_twiml(text, "he-IL"))
    say, hangup = list(root)
    assert say.tag == "Say" and say.text == text and say.get("language") == "he-IL"
    assert hangup.tag == "Hangup"
    with pytest.raises(ValueError):
        say_and_hangup_twiml("  ", "en-US")


# ------------------------------------------------------------------ signatures


def test_webhook_signature() -> None:
    token = "12345abcdef"
    url = "https://engine.example.com/twilio/voice?business=demo"
    params = {"CallSid": CALL_SID, "From": "+972501234567", "To": "+97235551234"}
    sig = RequestValidator(token).compute_signature(url, params)
    assert signature.compute(token, url, params) == sig
    assert signature.valid_webhook(token, url, params, sig)
    assert not signature.valid_webhook(token, url, dict(params, From="+1555"), sig)  # tampered form
    assert not signature.valid_webhook(token, url + "x", params, sig)  # tampered url
    assert not signature.valid_webhook("other-token", url, params, sig)
    tampered = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    assert not signature.valid_webhook(token, url, params, tampered)
    assert not signature.valid_webhook(token, url, params, None)
    assert not signature.valid_webhook(token, url, params, "")
    assert not signature.valid_webhook("", url, params, sig)


def test_ws_upgrade_signature() -> None:
    token = "12345abcdef"
    url = "wss://engine.example.com/twilio/media?business=demo&from=%2B972"
    sig = RequestValidator(token).compute_signature(url, {})
    assert signature.valid_ws_upgrade(token, url, sig)
    assert signature.compute(token, url) == sig
    assert not signature.valid_ws_upgrade(token, url.replace("demo", "evil"), sig)
    assert not signature.valid_ws_upgrade(token, url, base64.b64encode(b"\x00" * 20).decode())
    assert not signature.valid_ws_upgrade(token, url, "not base64 at all")
    with pytest.raises(ValueError):
        signature.compute("", url)


def test_fixture_payloads_are_valid_base64_mulaw() -> None:
    for msg in CALL:
        if msg["event"] == "media":
            assert len(binascii.a2b_base64(msg["media"]["payload"], strict_mode=True)) == 160

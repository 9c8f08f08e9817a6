"""A phone call end to end, over a real WebSocket to a real ``callengine serve``.

The caller is ``SimulatedCaller``: it behaves as Twilio does (real-time 20 ms
frames, a playback buffer that drains in real time, marks echoed when heard,
``clear`` honoured) and speaks lines synthesized offline by espeak-ng. The
host runs the embedded providers: silero VAD, faster-whisper (tiny.en), espeak-ng
and the rule planner. Everything is checked at the wire and in the store.

The phone number is read by a person, not espeak-ng: the digits are the recorded
telephony prompts of the evaluation data (``scripts/fetch-eval-data.sh``, run by
``make test``), after an espeak-ng "My phone number is". espeak-ng's digits are
misheard by whisper often enough ("0 5 4" -> "original 5-4") to make a test of the
engine's lead flow depend on the synthesizer's diction.
"""

from __future__ import annotations

import json
import re
import urllib.request
import wave
from pathlib import Path

import numpy as np

import pytest
import trio
from trio_websocket import open_websocket_url

from bench.eval_data import DataError, default_data_dir
from callsim.voice import synthesize_line
from engine.audio import ulaw_decode, ulaw_encode
from tests.conftest_host import TWILIO_TOKEN, HostProcess
from callsim import BargeIn, Pause, PressKey, Say, SimulatedCaller, WaitForReply
from transports.signature import compute
from transports.twilio import CallerSideStream


ROOT = Path(__file__).resolve().parent.parent


def _recorded_digit(digit: str) -> np.ndarray:
    """One digit read by a person (8 kHz PCM16), its leading and trailing silence cut."""
    data = default_data_dir()
    path = (data if data.is_absolute() else ROOT / data) / "asterisk" / "digits" / f"{digit}.wav"
    if not path.is_file():
        raise DataError(f"missing {path}; fetch it with scripts/fetch-eval-data.sh (make test does)")
    with wave.open(str(path)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (8000, 2, 1), path
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 650)
    return pcm[max(0, loud[0] - 80) : loud[-1] + 80]


def phone_number_line(number: str) -> bytes:
    """ "My phone number is" (espeak-ng) then ``number`` digit by digit in a recorded
    human voice, grouped 3-3-4 as people say it; 8 kHz μ-law."""
    parts = [np.frombuffer(ulaw_decode(synthesize_line("My phone number is")), dtype="<i2")]
    parts.append(np.zeros(1200, dtype="<i2"))
    for i, digit in enumerate(number):
        parts.append(_recorded_digit(digit))
        parts.append(np.zeros(2000 if i in (2, 5) else 480, dtype="<i2"))
    return ulaw_encode(np.concatenate(parts).astype("<i2").tobytes())


def caller(h: HostProcess, steps: list, **kw) -> SimulatedCaller:  # type: ignore[type-arg]
    return SimulatedCaller(h.ws, steps, auth_token=TWILIO_TOKEN, keep_audio=False, **kw)


async def test_call_transcribes_replies_confirms_the_number_and_stores_the_lead(host: HostProcess) -> None:
    c = caller(
        host,
        [
            Say("I have a leaking pipe in the kitchen"),
            WaitForReply(timeout=20),
            Say("My name is David Cohen"),
            WaitForReply(timeout=20),
            Say(audio=phone_number_line("0549876543")),
            WaitForReply(timeout=20),  # the number read back: "I have 0 5 4, 9 8 7, 6 5 4 3. Is that right?"
            Say("Yes, that's right"),
            WaitForReply(timeout=20),
        ],
        custom_parameters={"from": "+15550001111", "to": "+15005550006"},
    )
    result = await c.run()
    assert result.ok, result.errors
    assert result.greeting_first_frame_ms is not None
    assert all(t.reply_first_frame_ms is not None for t in result.turns), result.turns
    assert result.marks_received >= 5  # greeting + four replies, each closed by a mark
    assert result.underruns == 0
    assert not result.violations

    record = await trio.to_thread.run_sync(lambda: host.call_record(result.call_sid, turns=4))
    assert record["business"] == "demo" and record["from"] == "+15550001111"
    status, listing = await trio.to_thread.run_sync(lambda: host.get("/admin/calls"))
    mine = [c for c in listing["calls"] if c["call_sid"] == result.call_sid]
    assert mine and mine[0]["state"] == "ended" and mine[0]["stream_sid"] == result.stream_sid
    assert mine[0]["business"] == "demo" and mine[0]["started_at"]
    turns = record["turns"]
    text = " ".join(t["transcript"].lower() for t in turns)
    assert "leak" in text and "kitchen" in text, turns
    assert "david" in text, turns
    assert re.sub(r"\D", "", text).find("549876543") >= 0, [t["transcript"] for t in turns]
    assert "name" in turns[0]["reply"].lower()  # asked for the name next
    for t in turns:
        stamps = t["stamps"]
        for key in ("ws_connected", "greeting_first_frame", "speech_start", "speech_end", "stt_final",
                    "llm_start", "llm_first_token", "tts_first_audio", "reply_first_frame"):
            assert key in stamps, (key, stamps)
        assert stamps["speech_start"] < stamps["speech_end"] <= stamps["stt_final"] <= stamps["reply_first_frame"]
        assert t["interrupted"] is False
    leads = record["leads"]
    assert len(leads) == 1 and leads[0]["complete"]
    fields = leads[0]["fields"]
    assert "david" in fields["name"].lower()
    assert fields["phone"].endswith("549876543") and fields["phone_e164"] == "+972549876543"
    assert "9 8 7" in turns[2]["reply"] and "right" in turns[2]["reply"]  # read back, then confirmed
    assert "leak" in fields["need"].lower()


async def test_barge_in_clears_and_records_an_interrupted_turn(host: HostProcess) -> None:
    c = caller(
        host,
        [
            Say("When do you open"),
            BargeIn(after_ms=700, text="Hold on, what is the price"),
            WaitForReply(timeout=20),
        ],
    )
    result = await c.run()
    assert result.ok, result.errors
    assert result.clears_received, "the agent cleared its audio when talked over"
    barge = [t for t in result.turns if t.barge_in]
    assert barge and barge[0].clear_ms is not None
    record = await trio.to_thread.run_sync(lambda: host.call_record(result.call_sid, turns=2))
    interrupted = [t for t in record["turns"] if t["interrupted"]]
    assert interrupted, record["turns"]
    assert "open" in interrupted[0]["transcript"].lower()
    last = record["turns"][-1]
    assert "price" in last["transcript"].lower()
    assert "shekel" in last["reply"].lower()  # the price FAQ answered the barge-in
    assert not last["interrupted"]


async def test_junk_frames_are_counted_and_the_call_goes_on(host: HostProcess) -> None:
    """Malformed input mid-call: counted and dropped, the call completes normally."""
    proto = CallerSideStream("CA" + "j" * 32, "MZ" + "j" * 32)
    url = host.ws
    sig = compute(TWILIO_TOKEN, url)
    async with open_websocket_url(url, extra_headers=[("X-Twilio-Signature", sig)]) as ws:
        await ws.send_message(proto.connected())
        await ws.send_message(json.dumps({"event": "media", "media": {"payload": "AAAA"}}))  # before start
        await ws.send_message(proto.start({"from": "+1555"}))
        junk = [
            "not json at all",
            json.dumps({"event": "frobnicate"}),
            json.dumps({"event": "media", "streamSid": proto.stream_sid, "media": {"payload": "!!!notbase64"}}),
            json.dumps({"event": "media", "streamSid": proto.stream_sid, "media": {"payload": ""}}),
            "x" * 100_000,
            b"\x00\x01binary",
        ]
        got_media = 0
        for j in junk:
            await ws.send_message(j)
        for i in range(100):  # 2 s of silence: the call is still up and streaming the greeting
            await ws.send_message(proto.media(b"\xff" * 160, i * 20))
            await trio.sleep(0.02)
        with trio.move_on_after(5):
            while got_media < 20:
                msg = json.loads(await ws.get_message())
                if msg.get("event") == "media":
                    got_media += 1
        assert got_media >= 20, "greeting audio kept flowing after junk"
        await ws.send_message(proto.stop())
    status, metrics = await trio.to_thread.run_sync(lambda: host.get("/metrics", admin=False))
    assert status == 200
    for kind in ("before_start", "not_json", "unknown_event", "bad_base64", "oversized", "binary_frame"):
        assert re.search(rf'callengine_protocol_violations_total{{kind="{kind}"}} [1-9]', metrics), kind


async def test_bad_signature_is_refused(host: HostProcess) -> None:
    from trio_websocket import HandshakeError

    with pytest.raises(HandshakeError) as info:
        async with open_websocket_url(host.ws, extra_headers=[("X-Twilio-Signature", "bm90IHRoZSBzaWduYXR1cmU=")]):
            pass
    assert getattr(info.value, "status_code", 403) == 403

    def post_voice(signature: str | None) -> int:
        body = b"CallSid=CA123&From=%2B15551112222&To=%2B15005550006"
        req = urllib.request.Request(host.http + "/twilio/voice", data=body, method="POST")
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
        if signature:
            req.add_header("X-Twilio-Signature", signature)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert await trio.to_thread.run_sync(post_voice, "wrong") == 403
    assert await trio.to_thread.run_sync(post_voice, None) == 403
    good = compute(TWILIO_TOKEN, host.http + "/twilio/voice",
                   {"CallSid": "CA123", "From": "+15551112222", "To": "+15005550006"})
    assert await trio.to_thread.run_sync(post_voice, good) == 200


async def test_voice_webhook_answers_twiml_with_stream_parameters(host: HostProcess) -> None:
    params = {"CallSid": "CAabc", "From": "+15551112222", "To": "+97235550100"}
    url = host.http + "/twilio/voice"

    def post() -> str:
        body = urllib.parse.urlencode(params).encode()
        req = urllib.request.Request(url, data=body, method="POST")
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
        req.add_header("X-Twilio-Signature", compute(TWILIO_TOKEN, url, params))
        req.add_header("Host", f"127.0.0.1:{host.port}")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/xml")
            return resp.read().decode()

    import urllib.parse

    twiml = await trio.to_thread.run_sync(post)
    assert "<Connect>" in twiml and "<Stream" in twiml
    assert f'url="wss://127.0.0.1:{host.port}/twilio/media"' in twiml
    assert 'name="business" value="demo-he"' in twiml  # chosen by the called number
    assert 'name="from" value="+15551112222"' in twiml
    assert "statusCallback=" in twiml and "/twilio/status" in twiml


async def test_dtmf_is_recorded_on_the_turn(host: HostProcess) -> None:
    c = caller(host, [PressKey("4"), PressKey("2"), Say("I need a plumber"), WaitForReply(timeout=20)])
    result = await c.run()
    assert result.ok, result.errors
    record = await trio.to_thread.run_sync(lambda: host.call_record(result.call_sid, turns=1))
    assert record["turns"][0]["dtmf"] == "42"


async def test_ten_concurrent_calls_all_complete(host: HostProcess) -> None:
    results = []

    async def one(i: int) -> None:
        await trio.sleep(i * 0.15)
        c = caller(host, [Say("When do you open"), WaitForReply(timeout=40), Pause(0.3)])
        results.append(await c.run())

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(one, i)
    assert len(results) == 10
    for r in results:
        assert r.ok, r.errors
        assert r.greeting_first_frame_ms is not None
        assert r.turns[0].reply_first_frame_ms is not None
    for r in results:
        record = await trio.to_thread.run_sync(lambda sid=r.call_sid: host.call_record(sid, turns=1))
        assert "open" in record["turns"][0]["transcript"].lower()
        assert "sunday" in record["turns"][0]["reply"].lower(), (record["turns"][0]["transcript"], record["turns"][0]["stamps"])


async def test_live_call_shows_its_tree_and_state(host: HostProcess) -> None:
    c = caller(host, [Pause(3.0), Say("I need a plumber"), WaitForReply(timeout=20)])
    seen: dict = {}

    async def watch() -> None:
        while not seen:
            status, listing = await trio.to_thread.run_sync(lambda: host.get("/admin/calls"))
            live = [x for x in listing["calls"] if x["call_sid"] == c.result.call_sid and x["state"] == "live"]
            if live:
                status, tree = await trio.to_thread.run_sync(
                    lambda: host.get(f"/admin/calls/{c.result.call_sid}/tree")
                )
                # A snapshot taken while the tree is still starting shows a child not yet
                # running (kind "-"): the call is live for seconds, so wait for a settled one.
                if status == 200 and len(tree["children"]) == 6 and all(
                    ch["status"] == "running" for ch in tree["children"]
                ):
                    seen.update(tree)
            await trio.sleep(0.2)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        result = await c.run()
        with trio.move_on_after(5):
            while not seen:
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert result.ok, result.errors
    assert seen, "the live call's tree was served"
    assert seen["kind"] == "supervisor" and seen["role"] == f"call:{result.call_sid}"
    kinds = {ch["role"]: ch["kind"] for ch in seen["children"]}
    assert kinds == {"transport": "trio", "pacer": "trio", "decoder": "trio", "planner": "trio",
                     "tts": "pykka", "stt": "pykka"}
    for ch in seen["children"]:
        assert ch["status"] == "running" and ch["restarts"] == 0 and ch["fallback"] is False
    with trio.move_on_after(5):
        while True:
            status, gone = await trio.to_thread.run_sync(lambda: host.get(f"/admin/calls/{result.call_sid}/tree"))
            if status == 404:
                break
            await trio.sleep(0.1)
    assert status == 404  # the tree ended with the call

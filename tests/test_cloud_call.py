"""The cloud speech path end to end: a real host, the real clients, fault-injecting peers.

A real ``callengine serve`` subprocess runs ``CALLENGINE_STT=google CALLENGINE_TTS=google
CALLENGINE_LLM=openai``; the real ``google-cloud-speech``, ``google-cloud-texttospeech`` and
``openai`` clients inside it talk to the local peers of ``tests.peers`` (started here, in the
test process, on free loopback ports, over plaintext gRPC and HTTP). The caller is the
``SimulatedCaller``: real-time 20 ms μ-law frames of espeak-ng speech over a signed Twilio
Media Streams WebSocket. Everything is checked at the wire, in the admin API (the live call
tree, the stored call record, the metrics) and in what the peers recorded.

The speech peer does not hear words: it cuts utterances by energy and gives the k-th
utterance of a call the k-th line of its script, recognizing replayed audio (a restarted or
rotated stream) as the same utterance by fingerprint. The engine sends no ``call-id:`` hint,
so every test starts with ``SpeechPeer.reset(script)``: the next utterance the peer hears is
line 0 again. Scripts are the spoken lines themselves, so what the stored turns say can be
compared with what the caller said.

Two hosts are shared by the whole module (they differ only in environment; each loads the
whisper fallback, a few seconds, and they start side by side): ``main`` (fast half-open
probe: ``stt_probe_interval_s=2``, ``stt_probe_hold_s=1``) and ``rotating``
(``google.rotate_after_s=3``); the turn settings are the shipped ones. Tests reset the peers'
faults and delays before they run (an autouse fixture), so their order does not matter,
except that the model-downgrade test must be the first Hebrew call ``main`` sees (no other
test calls the Hebrew business).

Time: host start (~10 s), then fourteen real-time calls of 5-20 s: about two minutes.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import pytest
import trio

from engine.audio import ulaw_encode
from tests.conftest_host import TWILIO_TOKEN, HostProcess, start_host
from tests.peers.openai_peer import OpenAIPeer, Rule
from tests.peers.speech_peer import SpeechPeer
from tests.peers.tts_peer import TtsPeer
from callsim import CallResult, Pause, Say, SimulatedCaller, Step, WaitForReply
from transports.twilio import Media

# ---------------------------------------------------------------------- the peers' behaviour

SUMMARY = "The caller asked for a plumber and left a name."
FALLBACK_EN = "Sorry, I didn't catch that. Could you say it in a few words?"  # demo.toml prompts.en.fallback

RULES = [
    # The summary request (non-streaming) carries the transcript as "Caller: ... / Agent: ...".
    Rule("Caller:", reply=SUMMARY),
    Rule("my name is", reply="Thank you. What is the best phone number to reach you?",
         tool="save_lead", arguments={"name": "David Cohen"}),
    Rule("leaking", reply="Sorry to hear about the leak. Can I have your name, please?",
         tool="save_lead", arguments={"need": "leaking pipe"}),
    Rule("plumber", reply="A plumber can come tomorrow morning."),
    Rule("close", reply="We close at six in the evening."),
    Rule("open", reply="We open at eight in the morning."),
    Rule("price", reply="A visit costs two hundred shekels."),
]
DEFAULT_REPLY = "Okay. Is there anything else?"
TTS_MS_PER_CHAR = 25  # the peer's speech length: short, so that calls stay short
#: An interim result every 100 ms of speech, one more word each: the partial has every word
#: before the caller stops (a recognizer that keeps up). With the peer's default 200 ms, long
#: lines end with a partial a word short, the turn ends early on it (early finalize: >= 18
#: chars, stable 250 ms) and the record keeps the short text (see the xfail test below).
INTERIM_EVERY_MS = 100

#: The fallback bound for a silent primary: three backoffs (0.2 + 0.4 + 0.8 s, jitter 10 %)
#: before the fallback, plus whisper's time for a 2 s line (about 0.6 s here, 2-3x that on a
#: loaded 2-core machine), plus the normal turn (VAD hangover, LLM, TTS). Asserted generously.
SILENCE_BOUND_S = 6.0


@dataclass
class Peers:
    speech: SpeechPeer
    tts: TtsPeer
    llm: OpenAIPeer


@dataclass
class Hosts:
    main: HostProcess
    rotating: HostProcess


@pytest.fixture(scope="module")
def peers() -> Iterator[Peers]:
    speech = SpeechPeer().start()
    tts = TtsPeer(ms_per_char=TTS_MS_PER_CHAR).start()
    llm = OpenAIPeer(RULES, default_reply=DEFAULT_REPLY).start()
    try:
        yield Peers(speech, tts, llm)
    finally:
        llm.stop()
        tts.stop()
        speech.stop()


def _cloud_env(p: Peers, **extra: str) -> dict[str, str]:
    env = {
        "CALLENGINE_STT": "google",
        "CALLENGINE_TTS": "google",
        "CALLENGINE_LLM": "openai",
        "CALLENGINE_GOOGLE_SPEECH_ENDPOINT": p.speech.address,
        "CALLENGINE_GOOGLE_TTS_ENDPOINT": p.tts.address,
        "CALLENGINE_GOOGLE_INSECURE": "1",
        "OPENAI_BASE_URL": p.llm.base_url,
        "OPENAI_API_KEY": "test",
    }
    env.update(extra)
    return env


def _wait_healthy(h: HostProcess, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if h.proc.poll() is not None:
            raise RuntimeError(f"host exited with {h.proc.returncode}:\n{h.log()}")
        try:
            if h.get("/healthz", admin=False, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"host did not become healthy:\n{h.log()}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def hosts(peers: Peers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    """The hosts, started side by side (each pre-synthesizes its greetings through the TTS peer)."""
    main = start_host(
        tmp_path_factory.mktemp("cloud-main"),
        _cloud_env(
            peers,
            CALLENGINE_SUPERVISION_STT_PROBE_INTERVAL_S="2",
            CALLENGINE_SUPERVISION_STT_PROBE_HOLD_S="1",
            # Each failed probe counts toward the call's restart intensity (10 in 30 s by
            # default); with a 2 s probe a dead primary would end the call after ~12 s.
            CALLENGINE_SUPERVISION_CALL_INTENSITY="40",
        ),
        wait=False,
    )
    rotating = start_host(
        tmp_path_factory.mktemp("cloud-rotating"),
        _cloud_env(peers, CALLENGINE_GOOGLE_ROTATE_AFTER_S="3"),
        wait=False,
    )
    started = [main, rotating]
    try:
        for h in started:
            _wait_healthy(h)
        yield Hosts(main, rotating)
    finally:
        for h in started:
            h.stop()


@pytest.fixture(autouse=True)
def clean_peers(peers: Peers) -> Peers:
    """Every test starts with well-behaved, undelayed peers and a fresh utterance counter."""
    peers.speech.reset([])
    peers.speech.final_delay_s = 0.1
    peers.speech.interim_every_ms = INTERIM_EVERY_MS
    peers.tts.set_faults(delay_s=0.0, fail_next=0, wrap_wav=True)
    peers.llm.set(rules=list(RULES), default_reply=DEFAULT_REPLY, headers_delay_s=0.0, ttft_s=0.0,
                  token_delay_s=0.0, stall_next=0, stall_s=0.0, fail_next=0)
    return peers


# ---------------------------------------------------------------------- helpers


@dataclass
class Observed:
    """One call as the caller measured it, plus its tree as the admin API showed it."""

    result: CallResult
    trees: list[tuple[float, dict[str, dict[str, Any]]]]  # (s since dialling, {role: slot snapshot})
    frame_sizes: list[int]  # payload size of every media message the caller received

    @property
    def stt(self) -> list[tuple[float, dict[str, Any]]]:
        return [(t, slots["stt"]) for t, slots in self.trees if "stt" in slots]

    def max_restarts(self, role: str = "stt") -> int:
        return max((slots[role]["restarts"] for _, slots in self.trees if role in slots), default=0)

    def ever_fallback(self) -> bool:
        return any(s["fallback"] for _, s in self.stt)

    def assert_planner_steady(self) -> None:
        """The planner never failed (a restart loses the reply in flight: the caller hears nothing)."""
        assert self.trees, "the call tree was never observed"
        errors = {slots["planner"]["last_error"] for _, slots in self.trees if "planner" in slots} - {""}
        assert self.max_restarts("planner") == 0 and not errors, errors


async def place_call(
    host: HostProcess,
    steps: Sequence[Step],
    *,
    business: str | None = None,
    keep_audio: bool = False,
    controller: Any = None,
) -> Observed:
    """Run one simulated call; meanwhile poll ``/admin/calls/{sid}/tree`` every 100 ms.

    ``controller(caller, observed)`` (async, optional) runs beside the call, e.g. to clear
    a fault at the right moment; it is cancelled when the call ends.
    """
    params = {"from": "+15550001111", "to": "+15005550006"}
    if business:
        params["business"] = business
    caller = SimulatedCaller(host.ws, list(steps), auth_token=TWILIO_TOKEN, keep_audio=keep_audio,
                             custom_parameters=params, call_timeout=120)
    observed = Observed(caller.result, [], [])
    # Count every media payload the caller's protocol object parses (frame sizes on the wire).
    proto = caller._proto
    parse = proto.receive

    def receive(text: Any) -> Any:
        events = parse(text)
        observed.frame_sizes.extend(len(e.payload) for e in events if isinstance(e, Media))
        return events

    proto.receive = receive  # type: ignore[method-assign]
    t0 = trio.current_time()
    path = f"/admin/calls/{caller.result.call_sid}/tree"

    async def watch() -> None:
        while True:
            status, tree = await trio.to_thread.run_sync(lambda: host.get(path, timeout=5))
            if status == 200:
                slots = {c["role"]: c for c in tree.get("children", [])}
                observed.trees.append((trio.current_time() - t0, slots))
            await trio.sleep(0.1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        if controller is not None:
            nursery.start_soon(controller, caller, observed)
        await caller.run()
        nursery.cancel_scope.cancel()
    return observed


def spaced(text: str) -> str:
    """Whitespace collapsed: the planner joins streamed sentences with a doubled space."""
    return " ".join(text.split())


def norm(text: str) -> str:
    return " ".join(re.findall(r"[\w']+", text.lower()))


def occurrences(haystack: str, phrase: str) -> int:
    return len(re.findall(rf"(?<![\w']){re.escape(norm(phrase))}(?![\w'])", norm(haystack)))


async def record_of(host: HostProcess, sid: str, turns: int) -> dict[str, Any]:
    return await trio.to_thread.run_sync(lambda: host.call_record(sid, turns=turns, timeout=20))


async def metric(host: HostProcess, name: str, labels: str) -> float:
    status, text = await trio.to_thread.run_sync(lambda: host.get("/metrics", admin=False))
    assert status == 200
    m = re.search(rf"^{re.escape(name)}{{{re.escape(labels)}}} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def dialogue(lines: Sequence[str], timeout: float = 20) -> list[Step]:
    steps: list[Step] = []
    for line in lines:
        steps += [Say(line), WaitForReply(timeout=timeout)]
    return steps


def assert_each_once(record: dict[str, Any], script: Sequence[str]) -> None:
    said = " | ".join(t["transcript"] for t in record["turns"])
    for line in script:
        assert occurrences(said, line) == 1, f"{line!r} transcribed {occurrences(said, line)}x in {said!r}"


# ---------------------------------------------------------------------- 1. streams killed


async def test_streams_killed_every_few_seconds_lose_and_double_nothing(hosts: Hosts, peers: Peers) -> None:
    lines = [
        "I have a leaking pipe in the kitchen",
        "My name is David Cohen",
        "When can the plumber come to my house",
    ]
    peers.speech.reset(lines)
    peers.speech.set_faults(kill_every_s=4.0)
    first_stream = peers.speech.stream_count
    obs = await place_call(hosts.main, dialogue(lines))
    r = obs.result
    assert r.ok, r.errors
    obs.assert_planner_steady()
    record = await record_of(hosts.main, r.call_sid, len(lines))

    # Each killed stream had carried new audio: no restart counts toward the fallback.
    assert not obs.ever_fallback(), "a stream killed after making progress was counted: whisper took over"
    assert_each_once(record, lines)
    assert [t["interrupted"] for t in record["turns"]] == [False] * len(lines)
    with peers.speech.lock:
        killed = [s for s in peers.speech.streams[first_stream:] if s.ended == "UNAVAILABLE"]
    assert len(killed) >= 2, "the peer killed streams during the call"
    assert obs.max_restarts() >= 2, obs.stt[-1:]  # the stt slot counted its restarts
    assert all(s["last_error"] == "" or "unavailable" in s["last_error"].lower() for _, s in obs.stt), obs.stt[-1:]
    with peers.speech.lock:
        finals = [i for s in peers.speech.streams[first_stream:] for i, _ in s.finals]
    assert finals == list(range(len(lines))), finals  # the peer finalized each utterance once, in order
    # Never silent: every line got a reply, and none took longer than the fallback bound.
    latencies = [t.reply_latency_ms for t in r.turns]
    print(f"\nkilled streams: {len(killed)}, stt restarts: {obs.max_restarts()}, fallback: {obs.ever_fallback()}, "
          f"reply latencies ms: {[round(x or -1) for x in latencies]}")
    assert all(x is not None for x in latencies), latencies
    assert max(latencies) < SILENCE_BOUND_S * 1000, latencies  # type: ignore[type-var]


async def test_streams_killed_after_3_5_s_of_audio_keep_the_call_on_the_primary(hosts: Hosts, peers: Peers) -> None:
    """The service ends every stream after 3.5 s of audio; the caller is silent for 4 s
    (the greeting and beyond), then speaks four lines, silent again while each reply
    plays. Every new stream gets only the unfinalized speech (never the silence before
    it), so each carries new audio before it dies and no restart counts toward the
    fallback: whisper never takes over and every line is transcribed once, by the peer.
    (Before, the silence since the last final was replayed into each new stream, the
    peer killed it during the replay, and the fourth such death switched to whisper.)"""
    lines = [
        "I have a leaking pipe in the kitchen",
        "My name is David Cohen",
        "Do you have parking near the office",
        "When can the plumber come to my house",
    ]
    peers.speech.reset(lines)
    peers.speech.set_faults(kill_after_audio_s=3.5)
    first_stream = peers.speech.stream_count
    obs = await place_call(hosts.main, [Pause(4.0), *dialogue(lines)])
    r = obs.result
    assert r.ok, r.errors
    obs.assert_planner_steady()
    record = await record_of(hosts.main, r.call_sid, len(lines))
    with peers.speech.lock:
        streams = peers.speech.streams[first_stream:]
        killed = [s for s in streams if s.ended == "UNAVAILABLE"]
        audio_s = [round(sum(s.audio_sizes) / 16000, 2) for s in streams]
        finals = [i for s in streams for i, _ in s.finals]
    restart_times = [t for (t, s), (_, prev) in zip(obs.stt[1:], obs.stt) if s["restarts"] > prev["restarts"]]
    in_30s = max((sum(1 for u in restart_times if t <= u < t + 30) for t in restart_times), default=0)
    latencies = [round(t.reply_latency_ms or -1) for t in r.turns]
    print(f"\nkill after 3.5 s of audio: streams {len(streams)}, killed {len(killed)}, stt restarts "
          f"{obs.max_restarts()} (at most {in_30s} in 30 s), fallback {obs.ever_fallback()}, audio per stream s "
          f"{audio_s}, call {r.duration_ms / 1000:.1f} s, reply latencies ms {latencies}")
    assert not obs.ever_fallback(), obs.stt[-1:]
    assert_each_once(record, lines)
    assert finals == list(range(len(lines))), finals  # the peer finalized each line once, in order
    assert len(killed) >= 4 and obs.max_restarts() >= 4, (len(killed), obs.stt[-1:])
    # No stream was fed the greeting's silence again (each would have died in its replay).
    assert all(a <= 3.6 for a in audio_s), audio_s
    assert all(x > 0 for x in latencies) and max(latencies) < SILENCE_BOUND_S * 1000, latencies


# ---------------------------------------------------------------------- 2. retries, fallback, probe


#: A line that whisper tiny.en gets right from 8 kHz espeak-ng speech ("I need a plumber" came
#: out as "I need an upper lumbar" through the engine's VAD cut).
WHISPER_LINE = "I have a leaking pipe in the kitchen"


async def test_three_retries_then_whisper_then_the_probe_restores_the_primary(hosts: Hosts, peers: Peers) -> None:
    peer_line = "When do you open"
    peers.speech.reset([peer_line])
    peers.speech.set_faults(fail_open=1_000_000)  # every open: UNAVAILABLE
    first_stream = peers.speech.stream_count
    marks: dict[str, Any] = {}

    async def controller(caller: SimulatedCaller, obs: Observed) -> None:
        # Phase 1: the primary is dead. The first snapshot with the fallback on: how many
        # primary streams had the peer refused by then?
        while not obs.ever_fallback():
            await trio.sleep(0.02)
        marks["streams_at_fallback"] = peers.speech.stream_count - first_stream
        marks["slot_at_fallback"] = next(s for _, s in obs.stt if s["fallback"])
        # Once whisper answered the first line, the service recovers.
        while not (caller.result.turns and caller.result.turns[0].reply_first_frame_ms is not None):
            await trio.sleep(0.05)
        peers.speech.clear_faults()
        marks["cleared_at"] = trio.current_time()
        seen = len(obs.stt)
        while True:
            fresh = [s for _, s in obs.stt[seen:]]
            if any(not s["fallback"] and s["status"] == "running" for s in fresh):
                break
            await trio.sleep(0.05)
        marks["restored_after_s"] = trio.current_time() - marks["cleared_at"]

    steps = [
        Pause(2.0),  # let the three retries run out: the fallback is on before the caller speaks
        Say(WHISPER_LINE),
        WaitForReply(timeout=20),
        Pause(5.0),  # the service is back; the probe (every 2 s, held 1 s) returns to it
        Say(peer_line),
        WaitForReply(timeout=20),
    ]
    obs = await place_call(hosts.main, steps, controller=controller)
    r = obs.result
    assert r.ok, r.errors
    obs.assert_planner_steady()
    record = await record_of(hosts.main, r.call_sid, 2)

    print(f"\nfallback: {marks}, latencies ms: {[round(t.reply_latency_ms or -1) for t in r.turns]}")
    # Exactly three retries: four primary opens refused, then the fallback in the same slot.
    assert marks["streams_at_fallback"] == 4, marks
    at = marks["slot_at_fallback"]
    assert at["restarts"] >= 3 and at["fallback"] is True and at["status"] == "fallback", at
    assert "unavailable" in at["last_error"].lower(), at
    # Whisper transcribed the first line (the peer never got to hear it).
    first = record["turns"][0]["transcript"].lower()
    assert "leaking" in first and "kitchen" in first, record["turns"]
    assert "leak" in record["turns"][0]["reply"].lower()  # the LLM answered what whisper heard
    # The probe returned the slot to the primary in the same call ...
    assert marks.get("restored_after_s") is not None and marks["restored_after_s"] < 4.0, marks
    assert obs.stt[-1][1]["fallback"] is False, obs.stt[-1]
    # ... and the peer (not whisper) recognized the later line: its scripted text.
    assert norm(record["turns"][1]["transcript"]) == norm(peer_line), record["turns"]
    with peers.speech.lock:
        finals = [f for s in peers.speech.streams[first_stream:] for f in s.finals]
    assert finals == [(0, peer_line)], finals
    assert "eight" in record["turns"][1]["reply"].lower()
    # Never silent on the way: both lines were answered within the bound.
    assert all(t.reply_latency_ms is not None and t.reply_latency_ms < SILENCE_BOUND_S * 1000 for t in r.turns), r.turns


# ---------------------------------------------------------------------- 3. rotation


async def test_stream_rotation_loses_and_doubles_no_word(hosts: Hosts, peers: Peers) -> None:
    lines = [
        "I need a plumber for my bathroom",
        "The sink is leaking under the cabinet",
        "What is the price of a visit",
        "When do you open on Sunday",
    ]
    peers.speech.reset(lines)
    first_stream = peers.speech.stream_count
    obs = await place_call(hosts.rotating, dialogue(lines))
    r = obs.result
    assert r.ok, r.errors
    obs.assert_planner_steady()
    assert r.duration_ms > 12_000  # long enough for several 3 s rotations
    record = await record_of(hosts.rotating, r.call_sid, len(lines))
    assert_each_once(record, lines)
    with peers.speech.lock:
        streams = peers.speech.streams[first_stream:]
        finals = [f for s in streams for f in s.finals]
        ended = [s.ended for s in streams]
    print(f"\nrotation: {len(streams)} streams for a {r.duration_ms / 1000:.1f} s call, finals {finals}")
    assert len(streams) > 1, "the session rotated its stream"
    # Replayed audio was recognized as the utterance it was (no new index). The peer may have
    # finalized an utterance on a stream the session had already retired: that final is dropped.
    assert {i for i, _ in finals} == set(range(len(lines))), finals
    assert "UNAVAILABLE" not in ended and "OUT_OF_RANGE" not in ended, ended
    assert obs.max_restarts() == 0, "a rotation is not a failure"


# ---------------------------------------------------------------------- 4. model downgrade


async def test_rejected_model_is_downgraded_once_per_language(hosts: Hosts, peers: Peers) -> None:
    hebrew = "שלום אני צריך אינסטלטור"
    peers.speech.reset([hebrew])
    peers.speech.set_faults(reject_models={"he-IL": {"phone_call"}})
    per_call: list[list[Any]] = []
    for _ in range(2):
        peers.speech.reset([hebrew])  # a fresh utterance counter per call
        peers.speech.set_faults(reject_models={"he-IL": {"phone_call"}})
        first = peers.speech.stream_count
        obs = await place_call(hosts.main, dialogue(["I need a plumber today"]), business="demo-he")
        assert obs.result.ok, obs.result.errors
        obs.assert_planner_steady()
        record = await record_of(hosts.main, obs.result.call_sid, 1)
        assert record["business_id"] == "demo-he"
        assert norm(record["turns"][0]["transcript"]) == norm(hebrew), record["turns"]
        with peers.speech.lock:
            per_call.append([(s.config, s.ended) for s in peers.speech.streams[first:]])
    (c1, c2) = per_call
    assert c1 and c2
    assert c1[0][0].language == "he-IL" and c1[0][0].model == "phone_call" and c1[0][1] == "INVALID_ARGUMENT", c1[0]
    later = [cfg for cfg, _ in c1[1:]] + [cfg for cfg, _ in c2]
    assert later and all(cfg.model != "phone_call" for cfg in later), later
    assert c2[0][0].model == "latest_long", c2[0]  # the second call starts with what worked


# ---------------------------------------------------------------------- 5. TTS audio on the wire


async def test_tts_audio_reaches_the_caller_as_bare_160_byte_mulaw_frames(hosts: Hosts, peers: Peers) -> None:
    line = "When do you open"
    peers.speech.reset([line])
    first_request = len(peers.tts.requests)
    obs = await place_call(hosts.main, dialogue([line]), keep_audio=True)
    r = obs.result
    assert r.ok, r.errors
    obs.assert_planner_steady()
    audio = bytes(r.received_audio)
    assert obs.frame_sizes and set(obs.frame_sizes) == {160}, set(obs.frame_sizes)
    assert len(audio) == 160 * len(obs.frame_sizes)
    assert b"RIFF" not in audio and b"WAVE" not in audio and b"fmt " not in audio
    # The peer wrapped every answer in a WAV header; what the caller got is its μ-law samples:
    # the greeting from the first byte, then the reply's sentences.
    greeting = "Hi, you've reached Demo Plumbing. How can I help you today?"
    assert audio.startswith(ulaw_encode(peers.tts.render(greeting, 8000))[:8000])
    with peers.tts.lock:
        spoken = [q for q in peers.tts.requests[first_request:]]
    assert [q.text for q in spoken] == ["We open at eight in the morning."], spoken
    assert spoken[0].encoding == "MULAW" and spoken[0].sample_rate == 8000
    reply = ulaw_encode(peers.tts.render(spoken[0].text, 8000))
    assert audio.find(reply[: len(reply) // 160 * 160]) > 0, "the reply's samples arrived intact"


# ---------------------------------------------------------------------- 6. LLM stall, speculation


async def test_llm_stall_gives_the_template_reply_in_time(hosts: Hosts, peers: Peers) -> None:
    line = "Can you send someone today"
    peers.speech.reset([line])
    peers.llm.set(stall_next=10, stall_s=5.0)  # headers, then nothing for 5 s: every reply stalls
    obs = await place_call(hosts.main, dialogue([line]))
    r = obs.result
    assert r.ok, r.errors
    obs.assert_planner_steady()
    record = await record_of(hosts.main, r.call_sid, 1)
    turn = record["turns"][0]
    assert spaced(turn["reply"]) == FALLBACK_EN, turn
    stamps = turn["stamps"]
    waited = stamps["llm_first_token"] - stamps["llm_start"]
    assert 2_900 <= waited <= 3_400, stamps  # the 3 s first-token deadline, then the template
    # The caller heard it within the turn end + 3.2 s + TTS time of its speech end.
    turn_end = stamps["llm_start"] - stamps["speech_end"]
    tts = stamps["reply_first_frame"] - stamps["llm_first_token"]
    assert tts < 1_000, stamps
    latency = r.turns[0].reply_latency_ms
    assert latency is not None and latency <= turn_end + 3_200 + tts + 300, (latency, stamps)


async def test_speculative_reply_is_discarded_when_the_final_differs(hosts: Hosts, peers: Peers) -> None:
    partial, final = "when are you open", "when do you close on friday"
    # The interim results say `partial` (stable long enough to speculate on), the final differs.
    peers.speech.reset([(partial, final)])
    before = await metric(hosts.main, "callengine_speculative_replies_total", 'outcome="discarded"')
    first_request = len(peers.llm.requests)
    obs = await place_call(hosts.main, dialogue(["When do you close on Friday evening please"]))
    r = obs.result
    assert r.ok, r.errors
    obs.assert_planner_steady()
    record = await record_of(hosts.main, r.call_sid, 1)
    after = await metric(hosts.main, "callengine_speculative_replies_total", 'outcome="discarded"')
    assert after >= before + 1, (before, after)
    with peers.llm.lock:
        asked = [q["messages"][-1]["content"] for q in peers.llm.requests[first_request:] if q.get("stream")]
    assert partial in asked, asked  # the speculative request went out on the partial ...
    assert asked[-1] == final, asked  # ... and the answer was made for the final
    turn = record["turns"][0]
    assert norm(turn["transcript"]) == norm(final)
    assert spaced(turn["reply"]) == "We close at six in the evening.", turn
    assert "eight" not in turn["reply"]


async def test_speculative_reply_is_kept_when_the_final_agrees(hosts: Hosts, peers: Peers) -> None:
    # Interim results grow to exactly the final text; 17 characters without punctuation is
    # not a strong partial (no early finalize), so the turn ends on the final, which agrees.
    text = "when do you close"
    peers.speech.reset([text])
    kept = await metric(hosts.main, "callengine_speculative_replies_total", 'outcome="kept"')
    first_request = len(peers.llm.requests)
    obs = await place_call(hosts.main, dialogue(["When do you close on Friday evening please"]))
    assert obs.result.ok, obs.result.errors
    obs.assert_planner_steady()
    record = await record_of(hosts.main, obs.result.call_sid, 1)
    assert spaced(record["turns"][0]["reply"]) == "We close at six in the evening."
    with peers.llm.lock:
        asked = [q["messages"][-1]["content"] for q in peers.llm.requests[first_request:] if q.get("stream")]
    assert asked == [text], "one request: the speculative one, kept"
    assert await metric(hosts.main, "callengine_speculative_replies_total", 'outcome="kept"') == kept + 1


# ---------------------------------------------------------------------- 7. summary and lead


async def _lead_call(hosts: Hosts, peers: Peers) -> CallResult:
    line = "My name is David Cohen"
    peers.speech.reset([line])
    obs = await place_call(hosts.main, dialogue([line]))
    r = obs.result
    assert r.ok, r.errors
    obs.assert_planner_steady()
    return r


async def test_save_lead_and_the_summary_request_after_hang_up(hosts: Hosts, peers: Peers) -> None:
    first_request = len(peers.llm.requests)
    r = await _lead_call(hosts, peers)
    record = await record_of(hosts.main, r.call_sid, 1)
    assert spaced(record["turns"][0]["reply"]) == "Thank you. What is the best phone number to reach you?"
    assert [ld["fields"].get("name") for ld in record["leads"]] == ["David Cohen"], record["leads"]

    def summary_request() -> dict[str, Any] | None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with peers.llm.lock:
                asked = [q for q in peers.llm.requests[first_request:] if not q.get("stream")]
            if asked:
                return asked[-1]
            time.sleep(0.1)
        return None

    asked = await trio.to_thread.run_sync(summary_request)
    assert asked is not None, "no summary request after hang-up"
    transcript = asked["messages"][-1]["content"]
    assert "Caller: My name is David Cohen" in transcript and "Agent: Thank you." in transcript, transcript
    assert asked["max_tokens"] <= 100  # a one-line summary, not a reply


async def test_summary_is_written_to_the_call_record(hosts: Hosts, peers: Peers) -> None:
    r = await _lead_call(hosts, peers)
    await record_of(hosts.main, r.call_sid, 1)

    def summary() -> str:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            status, call = hosts.main.get(f"/admin/calls/{r.call_sid}")
            if status == 200 and call.get("summary"):
                return call["summary"]
            time.sleep(0.2)
        return ""

    assert await trio.to_thread.run_sync(summary) == SUMMARY


# ---------------------------------------------------------------------- latency through the peers


async def test_turn_latency_through_the_peers(hosts: Hosts, peers: Peers) -> None:
    """Scripted delays: final 0.1 s after the peer's 300 ms end of speech, LLM first token
    0.2 s (+20 ms a token), TTS 0.1 s. The caller's measured latency must be their sum plus
    the engine's own share (VAD, hops, pacing), which must stay small."""
    lines = ["When do you open", "What is the price of a visit", "I need a plumber"]
    peers.speech.reset(lines)
    peers.speech.final_delay_s = 0.1
    peers.llm.set(ttft_s=0.2, token_delay_s=0.02)
    peers.tts.set_faults(delay_s=0.1)
    obs = await place_call(hosts.main, dialogue(lines))
    r = obs.result
    assert r.ok, r.errors
    obs.assert_planner_steady()
    record = await record_of(hosts.main, r.call_sid, len(lines))
    assert_each_once(record, lines)
    rows = []
    for caller_turn, stored in zip(r.turns, record["turns"]):
        s = stored["stamps"]
        rows.append({
            "ended_on": "final" if "stt_final" in s else "partial",
            "caller_ms": round(caller_turn.reply_latency_ms or -1),
            "end_to_final_ms": round(s["stt_final"] - s["speech_end"]) if "stt_final" in s else -1,
            "end_to_llm_start_ms": round(s["llm_start"] - s["speech_end"]),
            "llm_ttft_ms": round(s["llm_first_token"] - s["llm_start"]),
            "tts_ms": round(s["tts_first_audio"] - s["llm_first_token"]),
            "to_first_frame_ms": round(s["reply_first_frame"] - s["tts_first_audio"]),
            "engine_end_to_frame_ms": round(s["reply_first_frame"] - s["speech_end"]),
        })
    print("\nturn latency through the peers (final 0.1 s after 300 ms of silence, LLM ttft 0.2 s, TTS 0.1 s):")
    for row in rows:
        print("  " + "  ".join(f"{k}={v}" for k, v in row.items()))
    for row in rows:
        # Ended on the final: peer end-of-speech 0.3 s + final 0.1 + ttft 0.2 + first sentence
        # tokens + tts 0.1, about 0.8 s. Ended early on a strong partial with the speculative
        # reply kept: less (its LLM time ran while the caller spoke; tts_ms then includes the
        # time the held reply waited for the turn to end).
        assert row["caller_ms"] < 1_500, rows
        assert 150 <= row["llm_ttft_ms"] < 800, rows
        assert 90 <= row["tts_ms"] < 1_500, rows


# ---------------------------------------------------------------------- early finalize


async def test_a_final_after_an_early_finalize_keeps_the_call_going(hosts: Hosts, peers: Peers) -> None:
    """Default turn settings: the peer's partial shows every word during the speech, so once
    silence begins the turn ends early on the strong partial (>= 18 chars, stable 250 ms);
    the final (300 ms end-of-speech + 0.5 s later) arrives after that and must change nothing."""
    line = "I need a plumber for my bathroom"
    peers.speech.reset([line])
    peers.speech.final_delay_s = 0.5
    obs = await place_call(hosts.main, dialogue([line]))
    r = obs.result
    assert r.ok, r.errors
    obs.assert_planner_steady()
    record = await record_of(hosts.main, r.call_sid, 1)
    assert [norm(t["transcript"]) for t in record["turns"]] == [norm(line)]
    assert spaced(record["turns"][0]["reply"]) == "A plumber can come tomorrow morning."


async def test_a_final_that_corrects_an_early_finalized_partial_is_what_gets_recorded(
    hosts: Hosts, peers: Peers
) -> None:
    """A recognizer whose partial lags a word: the turn ends early on "... in the" (>= 18
    chars, stable 250 ms), then the final says "... in the kitchen". The record must keep what
    the caller said, i.e. the final."""
    partial, final = "I have a leaking pipe in the", "I have a leaking pipe in the kitchen"
    peers.speech.reset([(partial, final)])
    peers.speech.final_delay_s = 0.5
    obs = await place_call(hosts.main, dialogue([final]))
    assert obs.result.ok, obs.result.errors
    obs.assert_planner_steady()
    record = await record_of(hosts.main, obs.result.call_sid, 1)
    assert [norm(t["transcript"]) for t in record["turns"]] == [norm(final)], record["turns"]
